"""Weight import: PyTorch / torchvision state dicts -> zoo models."""

from model_zoo.convert.load import load, load_state_dict, torch_key
from model_zoo.convert.state_dict import read_state_dict

__all__ = ["load", "load_state_dict", "read_state_dict", "torch_key"]
