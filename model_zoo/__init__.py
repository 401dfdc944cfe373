"""Flax NNX model families with torchvision names, following the practise-jax model protocol, and weight import."""

from model_zoo.base import ZooModel
from model_zoo.convert import load, load_weights, read_state_dict
from model_zoo.registry import KnownWeights, ModelInfo, create, get_info, list_models
from practise_jax.errors import UserError

__all__ = ["KnownWeights", "ModelInfo", "UserError", "ZooModel", "create", "get_info", "list_models", "load", "load_weights", "read_state_dict"]
