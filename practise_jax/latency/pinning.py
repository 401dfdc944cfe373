"""Pinning the timing process: one or a few cores, XLA's thread pool to match; imports nothing heavy."""

from __future__ import annotations

import ctypes
import os
import signal
import sys


def pin(threads: int) -> None:
    """XLA single- or few-threaded, this process pinned to the last ``threads`` cores; call before JAX starts.

    On Linux the process also asks to be terminated when its parent dies, so a
    killed profile leaves no timing process behind.
    """
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    flags = [f"--xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'}",
             f"intra_op_parallelism_threads={threads}"]
    os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), *flags]).strip()
    os.environ["JAX_PLATFORMS"] = "cpu"
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if cores:
        os.sched_setaffinity(0, cores[-threads:])
