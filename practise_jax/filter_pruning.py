"""L1-norm filter pruning of every residual block's inner conv: the baseline PRACTISE compares against.

Li et al. (ICLR 2017) rank the filters of a conv by the L1 norm of their
weights and keep the largest. Here every block of a CIFAR ResNet keeps the
same fraction ``keep`` of its first conv's filters: ``conv1``'s output
channels, ``bn1`` and ``conv2``'s input channels shrink together, and the
block's output (the stage stream) keeps its width, so the student's
``pre_gap`` features still have the teacher's shape for the mimic loss. The
narrowed widths are the model's ``inner_widths`` constructor override, so a
pruned model saves, reloads and profiles like any zoo model.

For a latency target, `keep_for_speedup` bisects ``keep`` on *measured*
latency (the same interleaved, paired timing as the block profiler), since
FLOPs do not predict CPU or GPU latency well for narrow convs.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from flax import nnx

import model_zoo
from model_zoo.base import ZooModel
from model_zoo.cifar_resnet import CifarResNet, block_addresses
from model_zoo.errors import UserError
from model_zoo.prune import WEIGHTS
from practise_jax import latency


def check_supported(model: ZooModel) -> None:
    if not isinstance(model, CifarResNet):
        raise UserError(f"filter pruning is implemented for the CIFAR ResNets only, not {model.model_name}; "
                        "use a block-dropping method (--method practise, first-k or random).")


def inner_widths(teacher: ZooModel, keep: float) -> tuple[int, ...]:
    """Filters kept per block of the unpruned network (at least one each); dropped blocks keep their width."""
    check_supported(teacher)
    if not 0 < keep <= 1:
        raise UserError(f"the kept fraction of filters must be in (0, 1], got {keep}.")
    all_blocks, _ = block_addresses(int(teacher.model_name.removeprefix("cifar_resnet")))
    built = dict(zip(teacher.origin, (block for _, block in teacher.residual_blocks())))
    current = dict(teacher.overrides).get("inner_widths")
    widths = []
    for k, address in enumerate(all_blocks):
        if address in built:
            widths.append(max(1, round(keep * built[address].conv1.out_features)))
        else:  # dropped: never built, so it keeps whatever width it had
            widths.append(current[k] if current else None)
    return tuple(widths)


def kept_filters(conv_kernel: np.ndarray, count: int) -> np.ndarray:
    """Indices (ascending) of the ``count`` output filters with the largest L1 norm; kernel is (h, w, in, out)."""
    norms = np.abs(conv_kernel).sum(axis=(0, 1, 2))
    return np.sort(np.argsort(-norms, kind="stable")[:count])


def filter_prune(teacher: ZooModel, keep: float) -> ZooModel:
    """A copy of ``teacher`` whose blocks keep the ``keep`` fraction of their inner filters with the largest L1 norm."""
    widths = inner_widths(teacher, keep)
    student = model_zoo.create(teacher.model_name, dropped=teacher.dropped,
                               **{**dict(teacher.overrides), "inner_widths": widths})
    kept = {}
    for (address, block), (_, narrow) in zip(teacher.residual_blocks(), student.residual_blocks()):
        group, index = address.rsplit(".", 1)
        kept[(group, int(index))] = kept_filters(np.asarray(block.conv1.kernel[...]), narrow.conv1.out_features)
    weights = []
    for path, value in nnx.to_flat_state(nnx.state(teacher, WEIGHTS)):
        array = value[...]
        keep_index = kept.get(tuple(path[:2]))
        if keep_index is not None and path[2] == "conv1":
            array = array[..., keep_index]
        elif keep_index is not None and path[2] == "bn1":
            array = array[keep_index]
        elif keep_index is not None and path[2] == "conv2" and path[-1] == "kernel":
            array = array[:, :, keep_index, :]
        weights.append((path, value.replace(jax.numpy.asarray(array))))
    nnx.update(student, nnx.from_flat_state(weights))
    return student


def measure(teacher: ZooModel, keep: float, *, batch_size: int = 64, time_budget_s: float = latency.DEFAULT_TIME_BUDGET_S,
            cpu_threads: int = latency.DEFAULT_CPU_THREADS,
            cache: latency.Cache | None = None) -> tuple[latency.Setting, latency.Measurement]:
    """Latency of ``filter_prune(teacher, keep)`` timed against ``teacher``, as `latency.profile` times a drop set.

    ``measurement.tau`` is the reduction as a fraction; the result is
    cached under the narrowed widths. Weights do not matter for latency, so
    both models are built with random ones.
    """
    narrowed = {**dict(teacher.overrides), "inner_widths": inner_widths(teacher, keep)}
    setting = latency.make_setting(teacher.model_name, batch_size=batch_size, time_budget_s=time_budget_s,
                                   overrides=narrowed, cpu_threads=cpu_threads)
    key = setting.cache_key(teacher.dropped)
    cached = cache.get(key) if cache is not None else None
    if cached is not None:
        return setting, latency.Measurement.from_json(cached, cached=True)
    builds = [latency.Build(teacher.dropped, teacher.overrides), latency.Build(teacher.dropped, setting.overrides)]
    result = latency.measure(setting, builds, time_budget_s=time_budget_s)[1]
    if cache is not None:
        cache.put(key, result.to_json())
    return setting, result


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

