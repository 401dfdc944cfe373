"""Flax NNX model families with torchvision names, block masks and weight import."""

from model_zoo.base import ZooModel
from model_zoo.convert import load, read_state_dict
from model_zoo.errors import UserError
from model_zoo.prune import prune
from model_zoo.registry import KnownWeights, ModelInfo, create, get_info, list_models

__all__ = ["KnownWeights", "ModelInfo", "UserError", "ZooModel", "create", "get_info", "list_models", "load", "prune", "read_state_dict"]
