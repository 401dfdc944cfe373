"""Weights in and models out: PyTorch / torchvision state dicts and Keras models -> zoo models -> Keras."""

from model_zoo.convert.load import load, load_state_dict, load_weights, torch_key
from model_zoo.convert.state_dict import read_checkpoint, read_state_dict


def from_keras(source, *, dropped=()):
    """A zoo model from a ``keras.Model`` or a Keras file (see `model_zoo.convert.keras_import`)."""
    from model_zoo.convert.keras_import import load_keras

    return load_keras(source, dropped=dropped)


def to_keras(model, input_size=None):
    """A Keras 3 model of ``model`` (see `model_zoo.convert.keras_export`); imports Keras on first use."""
    from model_zoo.convert.keras_export import to_keras as export

    return export(model, input_size=input_size)


__all__ = ["from_keras", "load", "load_state_dict", "load_weights", "read_checkpoint", "read_state_dict", "to_keras",
           "torch_key"]
