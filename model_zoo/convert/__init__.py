"""Weight import: PyTorch / torchvision state dicts -> zoo models."""

from model_zoo.convert.load import load, load_state_dict, load_weights, torch_key
from model_zoo.convert.state_dict import read_checkpoint, read_state_dict


def to_keras(model, input_size=None):
    """A Keras 3 model of ``model`` (see `model_zoo.convert.keras_export`); imports Keras on first use."""
    from model_zoo.convert.keras_export import to_keras as export

    return export(model, input_size=input_size)


__all__ = ["load", "load_state_dict", "load_weights", "read_checkpoint", "read_state_dict", "to_keras", "torch_key"]
