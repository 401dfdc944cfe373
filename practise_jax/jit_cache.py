"""A persistent cache of compiled XLA programs, so a rerun (a resumed run, the next row of a table) skips compiling.

JAX keys each entry by the program and the compile options, so a cached
program is only ever reused for the same computation. The ``practise-jax``
command and the experiment scripts turn it on under
``$PRACTISE_CACHE/xla`` (default ``~/.cache/practise-jax/xla``);
``PRACTISE_XLA_CACHE=0`` turns it off. A script of your own can call
`use_persistent_cache` too.
"""

from __future__ import annotations

import os
from pathlib import Path

OPT_OUT = "PRACTISE_XLA_CACHE"


def default_dir() -> Path:
    root = os.environ.get("PRACTISE_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "practise-jax") / "xla"


def use_persistent_cache(directory: str | os.PathLike | None = None, *, min_compile_seconds: float = 1.0) -> Path | None:
    """Keep compiled programs that took at least ``min_compile_seconds`` to compile in ``directory``; returns it.

    Returns None (and changes nothing) when ``PRACTISE_XLA_CACHE=0``; a cache
    directory already configured (by your script, or ``JAX_COMPILATION_CACHE_DIR``)
    is kept as it is.
    """
    if os.environ.get(OPT_OUT, "1") == "0":
        return None
    import jax

    if jax.config.jax_compilation_cache_dir:
        return Path(jax.config.jax_compilation_cache_dir)
    path = Path(directory) if directory is not None else default_dir()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_seconds)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
