"""The disk-backed, resumable compression run that the CLI wraps: settings, inputs, phases, the run folder."""

from practise_jax.pipeline.compress import compress
from practise_jax.pipeline.config import INITS, METHODS, CompressConfig
from practise_jax.pipeline.inputs import Inputs, load_inputs, load_teacher
from practise_jax.pipeline.phases import PHASES

__all__ = ["INITS", "METHODS", "PHASES", "CompressConfig", "Inputs", "compress", "load_inputs", "load_teacher"]
