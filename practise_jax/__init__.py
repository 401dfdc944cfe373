"""PRACTISE in JAX: drop the most recoverable blocks of a CNN, recover it from a tiny set."""

from model_zoo.errors import UserError

__version__ = "0.1.0"
__all__ = ["CompressConfig", "UserError", "__version__", "compress", "load_compressed", "save_compressed"]

_LAZY = {
    "load_compressed": "practise_jax.checkpoint", "save_compressed": "practise_jax.checkpoint",
    "compress": "practise_jax.pipeline", "CompressConfig": "practise_jax.pipeline",
}


def __getattr__(name: str):
    """Import heavy submodules (orbax) only when their functions are first used."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'practise_jax' has no attribute '{name}'")
