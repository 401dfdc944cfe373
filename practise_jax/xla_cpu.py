"""XLA:CPU flags that make these networks train and run faster on a CPU.

XLA reads ``XLA_FLAGS`` once, when JAX starts its backends, so these must be
set before the first computation. The ``practise-jax`` command and the
experiment scripts call `use_fast_flags` first thing; a script of your own
can do the same (or set the flags itself). ``PRACTISE_XLA_DEFAULTS=0`` turns
it off, and a flag already named in ``XLA_FLAGS`` is left as the user set it.

* ``--xla_cpu_experimental_ynn_fusion_type=...``: convolutions, dots and
  reductions through YNNPACK instead of Eigen. Not ``eltwise``: YNNPACK's
  elementwise kernels turn a NaN into 0 in a ReLU, so a diverged run would
  keep a finite loss over NaN weights (tests/test_finetune.py catches it).
* ``--xla_cpu_multi_thread_eigen=false``: no intra-op threading. The convs of
  CIFAR ResNets (16-64 channels) scale badly over threads; XLA instead runs
  independent parts of one computation side by side, which is how a lockstep
  scoring step (one student per candidate) fills the cores.
* ``--xla_force_host_platform_device_count=<cores>``: one CPU device per core
  this process may use, so scoring and finetuning split each batch over the
  cores (`practise_jax.devices`; all local devices by default). On the 2-core
  reference machine this made a finetune step of cifar_resnet56 1.36x and a
  scoring step of its 24 candidates 1.23x faster than one device
  (experiments/README.md, "Scaling").

Effect on a 2-core Xeon (experiments/README.md, "XLA:CPU flags"): about 370 ->
300 ms per candidate for the lockstep adaptor step of cifar_resnet56's layer1
candidates in isolation; within the ~15% run-to-run noise of the PyTorch
benchmark (1.06x -> 1.11x of PyTorch for all 24); a finetune step unchanged.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

FAST_FLAGS = {
    "--xla_cpu_experimental_ynn_fusion_type": "individual_convolution,individual_dot,reduce",
    "--xla_cpu_multi_thread_eigen": "false",
    "--xla_force_host_platform_device_count": str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                                   else os.cpu_count() or 1),
}
OPT_OUT = "PRACTISE_XLA_DEFAULTS"


def _named(flags: str) -> set[str]:
    return {token.split("=", 1)[0] for token in flags.split()}


def use_fast_flags(environ: MutableMapping[str, str] = os.environ) -> list[str]:
    """Add each of `FAST_FLAGS` the user has not set to ``XLA_FLAGS``; returns the flags added.

    Adds nothing when ``PRACTISE_XLA_DEFAULTS=0`` or once JAX has started its
    backends (the flags could no longer take effect).
    """
    if environ.get(OPT_OUT, "1") == "0" or _backends_started():
        return []
    current = environ.get("XLA_FLAGS", "")
    added = [f"{name}={value}" for name, value in FAST_FLAGS.items() if name not in _named(current)]
    if added:
        environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
    return added


def _backends_started() -> bool:
    import sys

    if "jax" not in sys.modules:
        return False
    from jax._src import xla_bridge

    return xla_bridge.backends_are_initialized()
