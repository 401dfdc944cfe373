"""What is timed: a model's forward pass as a serialized JAX export, compiled where it is measured.

`program` lowers ``(weights, x) -> logits`` of any model (concrete or
abstract: only shapes matter) and serializes it with ``jax.export``. Its
``key`` is the sha256 of the StableHLO text without debug information, so two
models that compute the same thing (the same network minus any one of a
stage's identical blocks, say) have the same key: they are timed once and
share cache entries. A program carries no weights; the measuring side feeds
it N(0, 1) arrays of the right shapes, since weights do not change latency.

On a CPU the calls run by default in a fresh child process pinned to
``cpu_threads`` cores with XLA's intra-op threads set to match (1: single
threaded on one core, which on the 2-core reference machine cut the
per-round spread of tau from 4.1 to 1.3 percentage points;
`practise_jax.latency.child`); the child only needs the serialized
programs, so any model works, not just the registry's.
GPUs and TPUs are always measured in-process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from practise_jax.errors import UserError

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
WEIGHTS = (nnx.Param, nnx.BatchStat)


@dataclasses.dataclass(frozen=True)
class Cost:
    """XLA's cost analysis of one compiled forward call (whole batch) and the parameter count."""

    flops: float
    bytes_accessed: float
    params: int


@dataclasses.dataclass(frozen=True)
class Program:
    """A serialized forward pass ``(weights..., x) -> logits``; ``key`` names the computation."""

    key: str
    serialized: bytes
    params: int


def _materialise(leaf):
    """A concrete value for an abstract leaf that is not a weight (RNG keys and counters)."""
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        return jax.random.key(0)
    return jnp.zeros(leaf.shape, leaf.dtype)


def materialise(tree):
    """``tree`` with every abstract leaf (``jax.ShapeDtypeStruct``) made concrete by `_materialise`."""
    return jax.tree.map(lambda leaf: _materialise(leaf) if isinstance(leaf, jax.ShapeDtypeStruct) else leaf, tree)


def program(model: nnx.Module, batch_shape: Sequence[int], dtype: str = "float32") -> Program:
    """The forward pass of ``model`` (eval mode) on a batch of ``batch_shape`` in ``dtype``, exported.

    In a reduced dtype the floating weights are cast to it too, as for inference.
    """
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype '{dtype}'; choose one of: {', '.join(DTYPES)}.")
    jdtype = DTYPES[dtype]
    model = nnx.clone(model)
    model.eval()
    graphdef, weights, rest = nnx.split(model, WEIGHTS, ...)
    rest = materialise(rest)
    leaves, treedef = jax.tree.flatten(weights)
    specs = [jax.ShapeDtypeStruct(leaf.shape, jdtype if jnp.issubdtype(leaf.dtype, jnp.floating) else leaf.dtype)
             for leaf in leaves]
    x = jax.ShapeDtypeStruct(tuple(batch_shape), jdtype)

    def forward(leaves, x):
        return nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves), rest)(x)[0]

    jitted = jax.jit(forward)
    text = jitted.lower(specs, x).as_text(debug_info=False)
    exported = jax.export.export(jitted)(specs, x)
    params = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))
    return Program(hashlib.sha256(text.encode()).hexdigest()[:24], exported.serialize(), int(params))


@dataclasses.dataclass
class Compiled:
    """A compiled program bound to its inputs: ``run()`` is one blocking call."""

    run: Callable[[], object]
    cost: Cost


def cost_of(compiled, params: int) -> Cost:
    """FLOPs and bytes accessed from XLA's cost analysis (a dict, or a list of dicts in older JAX)."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else {}
    analysis = analysis or {}
    return Cost(flops=float(analysis.get("flops", math.nan)), bytes_accessed=float(analysis.get("bytes accessed", math.nan)),
                params=int(params))


def compile_program(prog: Program, device: jax.Device) -> Compiled:
    """Deserialize, feed finite inputs like a trained network's on ``device``, compile; ``run`` calls it once and blocks.

    Weights of two or more dimensions are N(0, 1 / fan-in), vectors (BN
    statistics, scales, biases) ones, the batch N(0, 1): activations stay of
    order one through any depth, with no NaN or infinity to slow a kernel.
    numpy draws them (jax.random would compile a program per shape).
    """
    exported = jax.export.deserialize(prog.serialized)
    rng = np.random.default_rng(0)

    def draw(aval, batch: bool):
        if not jnp.issubdtype(aval.dtype, jnp.floating):
            return np.zeros(aval.shape, aval.dtype)
        if batch or len(aval.shape) < 2:
            return (rng.standard_normal(aval.shape) if batch else np.ones(aval.shape)).astype(aval.dtype)
        return (rng.standard_normal(aval.shape) / np.sqrt(math.prod(aval.shape[:-1]))).astype(aval.dtype)

    avals = exported.in_avals
    leaves = [jax.device_put(draw(a, k == len(avals) - 1), device) for k, a in enumerate(avals)]
    weights, x = leaves[:-1], leaves[-1]
    compiled = jax.jit(exported.call).lower(weights, x).compile()
    return Compiled(lambda: jax.block_until_ready(compiled(weights, x)), cost_of(compiled, prog.params))


def in_child(threads: int, function: Callable, *args):
    """``function(*args)`` in a fresh interpreter pinned to ``threads`` cores (`practise_jax.latency.child`).

    ``function`` must be importable by name (a module-level function); the
    child sees this process's ``sys.path``.
    """
    with tempfile.TemporaryDirectory(prefix="practise-timing-") as folder:
        job, result = Path(folder) / "job.pkl", Path(folder) / "result.pkl"
        job.write_bytes(pickle.dumps((function, args)))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        done = subprocess.run([sys.executable, "-m", "practise_jax.latency.child", str(threads), str(job), str(result)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if done.returncode != 0 or not result.exists():
            tail = done.stderr.decode(errors="replace").strip().splitlines()[-15:]
            raise RuntimeError("the timing process failed:\n" + "\n".join(tail))
        return pickle.loads(result.read_bytes())
