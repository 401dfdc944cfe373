"""L1-norm filter pruning of every residual block's inner conv: the baseline PRACTISE compares against.

Li et al. (ICLR 2017) rank the filters of a conv by the L1 norm of their
weights and keep the largest. Here every block that names its inner channels
(``block.inner_channels = ("conv1", "bn1", "conv2")``: the conv whose filters
go, its BN, and the conv that reads them) keeps the same fraction ``keep`` of
those filters; the block's output (the residual stream) keeps its width, so
the student's ``pre_gap`` features still have the teacher's shape for the
mimic loss. `narrow` is model surgery: it works on any model that follows the
protocol, concrete or abstract, and marks each narrowed block with the count
it kept (``block.filters_kept``), which a checkpoint records to rebuild it.

For a latency target, `keep_for_speedup` bisects ``keep`` on *measured*
latency (the same interleaved timing as the block profiler), since FLOPs do
not predict CPU or GPU latency well for narrow convs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import numpy as np
from flax import nnx

from practise_jax import defaults, latency, protocol, surgery
from practise_jax.errors import UserError


def _inner(address: str, block: nnx.Module) -> tuple[str, str, str]:
    triple = getattr(block, "inner_channels", None)
    if triple is None:
        raise UserError(f"block '{address}' ({type(block).__name__}) names no inner_channels; filter pruning needs "
                        "(conv, bn, next conv) on every block it narrows.")
    return triple


def prunable(model: nnx.Module) -> list[protocol.Block]:
    """The blocks whose inner filters can be pruned; a clear error if there are none."""
    found = [b for b in protocol.blocks(model) if getattr(b.module, "inner_channels", None) is not None]
    if not found:
        raise UserError(f"no block of {getattr(model, 'model_name', type(model).__name__)} names its inner_channels; "
                        "filter pruning needs them (the CIFAR ResNets and ResNets do); use a block-dropping method.")
    return found


def kept_filters(model: nnx.Module) -> dict[str, int]:
    """``{block: filters kept}`` of the blocks `narrow` narrowed."""
    return {b.address: int(b.module.filters_kept) for b in protocol.blocks(model)
            if getattr(b.module, "filters_kept", None) is not None}


def largest_l1(kernel, count: int) -> np.ndarray:
    """Indices (ascending) of the ``count`` output filters with the largest L1 norm; kernel is (h, w, in, out)."""
    norms = np.abs(np.asarray(kernel)).sum(axis=(0, 1, 2))
    return np.sort(np.argsort(-norms, kind="stable")[:count])


def _take(value, index: np.ndarray, axis: int):
    """``value`` restricted to ``index`` along ``axis``; for abstract arrays, the restricted shape."""
    if isinstance(value, jax.ShapeDtypeStruct):
        shape = list(value.shape)
        shape[axis] = len(index)
        return jax.ShapeDtypeStruct(tuple(shape), value.dtype)
    return jax.numpy.take(value, jax.numpy.asarray(index), axis=axis)


def narrow(model: nnx.Module, widths: Mapping[str, int]) -> nnx.Module:
    """A copy of ``model`` whose blocks ``widths`` keep that many inner filters, those with the largest L1 norm."""
    student = nnx.clone(model)
    blocks = {b.address: b.module for b in protocol.blocks(student)}
    for address, count in widths.items():
        if address not in blocks:
            raise UserError(f"cannot narrow block '{address}': the model has no such (kept) block.")
        block = blocks[address]
        conv_path, bn_path, next_path = _inner(address, block)
        conv, bn, following = (surgery.get(block, p) for p in (conv_path, bn_path, next_path))
        if not 1 <= count <= conv.out_features:
            raise UserError(f"block '{address}' has {conv.out_features} inner filters; keep 1 to that many, not {count}.")
        kernel = conv.kernel.get_value()
        keep = np.arange(count) if isinstance(kernel, jax.ShapeDtypeStruct) else largest_l1(kernel, count)
        conv.kernel.set_value(_take(kernel, keep, 3))
        if conv.use_bias:
            conv.bias.set_value(_take(conv.bias.get_value(), keep, 0))
        conv.out_features = count
        for name in ("scale", "bias", "mean", "var"):
            variable = getattr(bn, name, None)
            if variable is not None:
                variable.set_value(_take(variable.get_value(), keep, 0))
        bn.num_features = count
        following.kernel.set_value(_take(following.kernel.get_value(), keep, 2))
        following.in_features = count
        block.filters_kept = int(count)
    return student


def filter_prune(teacher: nnx.Module, keep: float) -> nnx.Module:
    """A copy of ``teacher`` whose blocks keep the ``keep`` fraction (at least one) of their inner filters, by L1 norm."""
    if not 0 < keep <= 1:
        raise UserError(f"the kept fraction of filters must be in (0, 1], got {keep}.")
    widths = {}
    for block in prunable(teacher):
        conv = surgery.get(block.module, _inner(block.address, block.module)[0])
        widths[block.address] = max(1, round(keep * conv.out_features))
    return narrow(teacher, widths)


def measure(teacher: nnx.Module, keep: float, batch_shape, *, time_budget_s: float = defaults.LATENCY_BUDGET_S,
            cpu_threads: int = defaults.LATENCY_CPU_THREADS, cache: latency.Cache | None = None) -> latency.Measurement:
    """Latency of ``filter_prune(teacher, keep)`` timed against ``teacher``, as `latency.profile` times a drop set.

    ``measurement.tau`` is the reduction as a fraction. Weights do not matter
    for latency, so an abstract teacher is enough.
    """
    shape = latency.batch_shape_of(batch_shape)
    setting = latency.make_setting(getattr(teacher, "model_name", type(teacher).__name__), batch_size=shape[0],
                                   image_size=shape[1], time_budget_s=time_budget_s, cpu_threads=cpu_threads)
    narrowed = filter_prune(nnx.eval_shape(lambda: nnx.clone(teacher)), keep)
    _, [result] = latency.compare(setting, latency.program(teacher, shape), [(("filters",), latency.program(narrowed, shape))],
                                  cache=cache, time_budget_s=time_budget_s)
    return result


def keep_for_speedup(target: float, measure: Callable[[float], float], *, steps: int = 7) -> tuple[float, float]:
    """The largest kept fraction (to 1/2**steps) whose measured tau reaches ``target``, and that tau.

    Bisection on ``keep``, assuming latency falls as filters are removed; raises if even 1/2**steps is not enough.
    """
    low, high = 0.0, 1.0
    best, tau = None, None
    for _ in range(steps):
        middle = (low + high) / 2
        tau = measure(middle)
        if tau >= target:
            low, best = middle, (middle, tau)
        else:
            high = middle
    if best is None:
        raise UserError(f"filter pruning cannot reach a {100 * target:.0f}% latency cut here: keeping "
                        f"{100 * high:.1f}% of the filters gave only {100 * tau:.1f}%. Lower --speedup.")
    return best
