"""Flax NNX model families (torchvision and keras.applications layouts) following the model protocol; weight import.

``load`` / ``load_weights`` read PyTorch files (any wrapper, no torch needed),
``.safetensors`` and ``.npz``; ``from_keras`` takes a ``keras.Model`` or a Keras
file (``.keras``, ``.weights.h5``, ``.h5``) and ``to_keras`` gives one back.
"""

from model_zoo.base import ZooModel
from model_zoo.convert import from_keras, load, load_weights, read_state_dict, to_keras
from model_zoo.registry import KnownWeights, ModelInfo, create, get_info, list_models, num_classes
from practise_jax.errors import UserError

__all__ = ["KnownWeights", "ModelInfo", "UserError", "ZooModel", "create", "from_keras", "get_info", "list_models", "load",
           "load_weights", "num_classes", "read_state_dict", "to_keras"]
