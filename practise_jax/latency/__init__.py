"""Latency profiler: tau of every candidate block, measured on the device, cached by program content.

``programs``: a model's forward pass as a serialized JAX export (what is
timed; its content hash names the computation). ``timing``: interleaved
calls on an injected clock. ``profile``: the teacher against its pruned
versions, tau from the fast ends of the calls. ``cache``: measurements on
disk. ``table``: rows, the printed table, CSV in and out. ``stats``:
quantiles.
"""

from practise_jax.latency.cache import Cache, default_cache_dir
from practise_jax.latency.profile import (
    DEFAULT_WARMUP, FAST_QUANTILE, Measurement, Profile, Setting, check_image_size, compare, make_setting, measure,
    batch_shape_of, normalise_candidates, pick_device, profile, total_stride,
)
from practise_jax.latency.programs import DTYPES, Compiled, Cost, Program, compile_program, in_child, program
from practise_jax.latency.stats import Spread, quantile
from practise_jax.latency.table import CSV_FIELDS, additivity, format_table, read_tau, rows, write_csv
from practise_jax.latency.timing import CLOCKS, MAX_ROUNDS, MIN_ROUNDS, Interleaved, choose_rounds, run_interleaved, time_call

__all__ = [
    "CLOCKS", "CSV_FIELDS", "DEFAULT_WARMUP", "DTYPES", "FAST_QUANTILE", "MAX_ROUNDS", "MIN_ROUNDS", "Cache", "Compiled",
    "Cost", "Interleaved", "Measurement", "Profile", "Program", "Setting", "Spread", "additivity", "batch_shape_of",
    "check_image_size",
    "choose_rounds", "compare", "compile_program", "default_cache_dir", "format_table", "make_setting", "measure",
    "normalise_candidates", "pick_device", "in_child", "profile", "program", "quantile", "read_tau", "rows",
    "run_interleaved", "time_call", "total_stride", "write_csv",
]
