"""Shared fixtures: where the real data lives, and tiny models for fast tests."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import jax
import pytest

from practise_jax import jit_cache, xla_cpu

xla_cpu.use_fast_flags()  # the kernels users get from the practise-jax command
# Tests run a few steps of many small programs, so compiling dominates them: LLVM's optimisation level 0
# halves some compile times. The same operations (a last-bit rounding may differ); speed is measured by the
# experiments, never by the tests.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
jax.config.update("jax_default_matmul_precision", "highest")

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("KERAS_BACKEND", "jax")  # Keras (tests and examples) on JAX unless told otherwise


REQUIRED = os.environ.get("PRACTISE_REQUIRE_DATA") == "1"  # CI: what a test needs must be there


def missing(message: str):
    """Skip a test whose data or package is absent; fail instead where PRACTISE_REQUIRE_DATA=1 (CI)."""
    if REQUIRED:
        pytest.fail(message + " (PRACTISE_REQUIRE_DATA=1 requires it)")
    pytest.skip(message, allow_module_level=True)


def require(module: str, reason: str = ""):
    """Import a test dependency (torch, keras), or `missing` it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        missing(f"{module} is not installed{': ' + reason if reason else ''}")


def shared_data_dir() -> Path:
    return Path(os.environ.get("PRACTISE_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (or $PRACTISE_DATA); skip when absent unless PRACTISE_REQUIRE_DATA=1."""
    path = shared_data_dir()
    if not (path / "cifar10_resnets").is_dir():
        missing(f"real data not found at {path}: set PRACTISE_DATA to the shared/data folder")
    return path


@pytest.fixture(autouse=True, scope="session")
def private_caches(tmp_path_factory):
    """Tests measure into caches of their own, never the user's (~/.cache/practise-jax).

    Compiled programs are kept for the session, in one folder shared by the
    xdist workers and the subprocesses tests start: the many tiny models and
    runs of the suite compile the same programs again and again.
    """
    previous = {name: os.environ.get(name) for name in ("PRACTISE_CACHE", "JAX_COMPILATION_CACHE_DIR")}
    os.environ["PRACTISE_CACHE"] = str(tmp_path_factory.mktemp("practise_cache"))
    session_root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        session_root = session_root.parent  # the workers' basetemps share this parent
    compiled = session_root / "compiled_programs"
    jit_cache.use_persistent_cache(compiled, min_compile_seconds=0)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(compiled)  # read by subprocesses' JAX too
    yield
    for name, value in previous.items():
        if value is None:
            os.environ.pop(name)
        else:
            os.environ[name] = value
