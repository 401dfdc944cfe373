"""PRACTISE in JAX: drop the most recoverable blocks of a CNN, recover it from a tiny set."""

from model_zoo.errors import UserError

__version__ = "0.1.0"
__all__ = ["UserError", "__version__"]
