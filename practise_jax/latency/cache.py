"""The latency cache: one JSON file per measurement, named by the hash of its key; writes are atomic.

Keys hold the measuring conditions and the content hashes of the timed
programs (`practise_jax.latency.programs`), so a measurement is reused for
any model that compiles to the same computation, and never for another.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path


def default_cache_dir() -> Path:
    """``$PRACTISE_CACHE/latency``, else ``~/.cache/practise-jax/latency``."""
    root = os.environ.get("PRACTISE_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "practise-jax") / "latency"


def canonical(data) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)


class Cache:
    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()

    def path(self, key: Mapping) -> Path:
        digest = hashlib.sha256(canonical(key).encode()).hexdigest()[:24]
        return self.root / f"{key.get('label', 'model')}-{digest}.json"

    def get(self, key: Mapping) -> dict | None:
        path = self.path(key)
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(entry, dict) or canonical(entry.get("key")) != canonical(key):
            return None
        return entry.get("value")

    def put(self, key: Mapping, value: Mapping) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": key, "value": value}, indent=1))
        os.replace(tmp, path)
