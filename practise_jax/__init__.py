"""PRACTISE in JAX: drop the most recoverable blocks of a CNN, recover it from a tiny set.

The method as functions over NNX models and arrays (`practise_jax.api`):
``profile``, ``score``, ``select``, ``fit_latency`` (a target met as measured), ``drop``,
``finetune``, ``evaluate``, and
``synthesize`` (a data-free tiny set);
the model protocol any network follows to use them (``ResidualNetwork``,
``Stream``); checkpoints (``save_compressed``, ``load_compressed``); and the
disk-backed, resumable run the CLI wraps (``compress``, ``CompressConfig``).
"""

from practise_jax.errors import UserError

__version__ = "0.2.0"

_LAZY = {
    "profile": "practise_jax.api", "score": "practise_jax.api", "select": "practise_jax.api", "drop": "practise_jax.api",
    "finetune": "practise_jax.api", "evaluate": "practise_jax.api", "views": "practise_jax.api",
    "synthesize": "practise_jax.api", "fit_latency": "practise_jax.api",
    "Scores": "practise_jax.selection", "Score": "practise_jax.selection",
    "ResidualNetwork": "practise_jax.protocol", "Stream": "practise_jax.protocol",
    "InputSpec": "practise_jax.transforms", "Views": "practise_jax.transforms",
    "load_compressed": "practise_jax.checkpoint", "save_compressed": "practise_jax.checkpoint",
    "compress": "practise_jax.pipeline", "CompressConfig": "practise_jax.pipeline",
}

__all__ = ["UserError", "__version__", *_LAZY]


def __getattr__(name: str):
    """Import submodules (optax, orbax, ...) only when their functions are first used."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'practise_jax' has no attribute '{name}'")
