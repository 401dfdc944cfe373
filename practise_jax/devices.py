"""Devices and processes: the mesh the work is spread over, with JAX's own runtime.

Scoring spreads the candidates of a group over the devices of a
``jax.sharding.Mesh`` (axis ``candidates``), and the batch over a second
axis (``batch``) when there are fewer candidates than devices; finetuning is
data-parallel over a ``batch`` axis. The shardings say where each array lives
and XLA inserts the communication (the gradient reduction, the BatchNorm
statistics of a split batch), so the step functions stay the single-device
ones. Several processes (hosts) join with `initialize_processes`
(``jax.distributed``); the mesh then spans every process's devices and each
process feeds its own shards.
"""

from __future__ import annotations

import hashlib
import json
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from practise_jax.errors import UserError

CANDIDATES, BATCH = "candidates", "batch"


def local_devices(count: int | None = None, platform: str | None = None) -> list[jax.Device]:
    """The first ``count`` local devices of ``platform`` (default: JAX's default platform; all of them)."""
    devices = jax.local_devices(backend=platform) if platform else jax.local_devices()
    if count is None:
        return devices
    if count < 1:
        raise UserError(f"--devices must be at least 1, got {count}.")
    if count > len(devices):
        kind = devices[0].platform.upper()
        hint = (" (a CPU shows more devices with XLA_FLAGS=--xla_force_host_platform_device_count=N)"
                if devices[0].platform == "cpu" else "")
        raise UserError(f"--devices {count} asks for more devices than this process has: {len(devices)} {kind} "
                        f"device(s){hint}.")
    return devices[:count]


def global_devices(local: list[jax.Device]) -> list[jax.Device]:
    """With several processes, the same number of devices from every process; alone, ``local`` itself."""
    if jax.process_count() == 1:
        return local
    per_process = len(local)
    chosen = []
    for process in range(jax.process_count()):
        own = [d for d in jax.devices() if d.process_index == process]
        chosen += own[:per_process]
    return chosen


def spread(devices: int | list | None = None, batch: int | None = None) -> list[jax.Device] | None:
    """The devices to spread scoring over, or None for one device in one process (the lockstep path).

    ``devices``: a count of local devices, a list of them, or None for all
    local devices (as many as a ``batch`` of that size splits over evenly);
    with several processes, as many from each process.
    """
    chosen = global_devices(_splitting(_chosen(devices), batch, asked=devices is not None))
    return chosen if len(chosen) > 1 else None


def spread_locally(devices: int | list | None = None, batch: int | None = None) -> list[jax.Device] | None:
    """The local devices to split a batch over, or None for one (data parallelism stays within a process)."""
    chosen = _splitting(_chosen(devices), batch, asked=devices is not None, processes=1)
    return chosen if len(chosen) > 1 else None


def _chosen(devices: int | list | None) -> list[jax.Device]:
    return list(devices) if isinstance(devices, (list, tuple)) else local_devices(devices)


def _splitting(local: list[jax.Device], batch: int | None, asked: bool, processes: int | None = None) -> list[jax.Device]:
    """``local``, or by default (no devices asked for) its first few that a ``batch`` splits over evenly.

    Devices a user asked for are kept: a batch they do not divide is refused
    later with a message (`Placement.batch_split`).
    """
    if batch is None or asked:
        return local
    processes = processes or jax.process_count()
    return local[:max(c for c in range(1, len(local) + 1) if batch % (c * processes) == 0 or c == 1)]


SHARDS = ("auto", "candidates", "batch")


def preferred_shard(devices: list[jax.Device], shard: str = "auto") -> str:
    """How to spread scoring: ``shard`` as asked, or for "auto" the batch on CPUs, the candidates elsewhere.

    On 2 CPU cores (experiments/README.md, "Scaling") the lockstep step with its
    batch split over 2 devices ran 2.56 s per step of all 24 cifar_resnet56
    candidates, the batched computation with the candidates split 2.5x slower.
    """
    if shard not in SHARDS:
        raise UserError(f"unknown way to spread the candidates '{shard}'; choose one of: {', '.join(SHARDS)}.")
    if shard != "auto":
        return shard
    return "batch" if devices[0].platform == "cpu" else "candidates"


def candidate_mesh(devices: list[jax.Device], candidates: int) -> Mesh:
    """A mesh (candidates x batch) over ``devices``: as many candidate shards as divide the devices and fit the group."""
    count = len(devices)
    across = max(d for d in range(1, count + 1) if count % d == 0 and d <= max(1, candidates))
    return Mesh(np.asarray(devices).reshape(across, count // across), (CANDIDATES, BATCH))


def batch_mesh(devices: list[jax.Device]) -> Mesh:
    """A mesh (1 x N) that splits the batch over every device, as `candidate_mesh` with one candidate shard."""
    return Mesh(np.asarray(devices).reshape(1, len(devices)), (CANDIDATES, BATCH))


class Placement:
    """Where a computation's arrays live: JAX's default device, or a mesh (replicated, split by candidate or batch)."""

    def __init__(self, mesh: Mesh | None = None):
        self.mesh = mesh

    def everywhere(self, tree):
        """The same arrays on every device (of every process)."""
        return tree if self.mesh is None else place(tree, sharded(self.mesh))

    def by_candidate(self, tree):
        """Arrays with a leading candidate axis, split over the mesh's candidate axis."""
        return tree if self.mesh is None else place(tree, sharded(self.mesh, CANDIDATES))

    def batch_split(self, size: int):
        """The sharding that splits a batch of ``size`` over the batch axis; None where nothing is split.

        A batch that does not divide evenly is refused: each device must get the same share.
        """
        across = 1 if self.mesh is None else self.mesh.shape[BATCH]
        if across == 1:
            return None
        if size % across:
            raise UserError(f"a batch of {size} images does not split over {across} devices; choose a batch size (or a "
                            f"tiny set) divisible by {across}, or fewer devices.")
        return sharded(self.mesh, BATCH)


def sharded(mesh: Mesh, *axes) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(*axes))


def place(tree, sharding: NamedSharding):
    """Put host arrays (the same on every process) onto ``sharding``: each process fills its own shards."""
    def one(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(one, tree)


def fetch(array) -> np.ndarray:
    """A (possibly sharded over several processes) array as one host array, on every process."""
    if array.is_fully_addressable:
        return np.asarray(array)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(array, tiled=True))


# --------------------------------------------------------------------------- processes

ENV = {"coordinator": "JAX_COORDINATOR_ADDRESS", "num_processes": "JAX_NUM_PROCESSES", "process_id": "JAX_PROCESS_ID"}


def initialize_processes(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
                         *, timeout_s: int = 120) -> bool:
    """Join the other processes with ``jax.distributed.initialize``; False (nothing done) when not asked to.

    Each setting comes from its argument or else its environment variable
    (``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``);
    ``coordinator="auto"`` lets JAX detect the cluster (TPU slices, SLURM,
    Open MPI) and needs nothing else. A coordinator that does not answer within ``timeout_s`` ends in a clear
    error, not a hang.
    """
    coordinator = coordinator or os.environ.get(ENV["coordinator"])
    if coordinator == "auto":  # JAX finds the cluster itself: TPU slices, SLURM, Open MPI, ...
        return _join(lambda: jax.distributed.initialize(initialization_timeout=timeout_s), "this process", "the cluster's "
                     "coordinator", "Run it where JAX detects the cluster (a TPU slice, a SLURM or MPI job), or give "
                     "--coordinator HOST:PORT, --num-processes and --process-id.")
    num_processes = num_processes if num_processes is not None else _env_int("num_processes")
    process_id = process_id if process_id is not None else _env_int("process_id")
    given = [v is not None for v in (coordinator, num_processes, process_id)]
    if not any(given):
        return False
    if not all(given):
        names = [f"--{k.replace('_', '-')} ({ENV[k]})" for k, ok in zip(ENV, given) if not ok]
        raise UserError(f"several processes need a coordinator address, the number of processes and this process's "
                        f"id; missing: {', '.join(names)}.")
    if not 0 <= process_id < num_processes:
        raise UserError(f"the process id must be 0..{num_processes - 1} for {num_processes} processes, got {process_id}.")
    if process_id > 0:  # JAX aborts the process when it cannot reach the coordinator: find out first, and say so
        _wait_for(coordinator, timeout_s, f"process {process_id} of {num_processes}")
    return _join(lambda: jax.distributed.initialize(coordinator, num_processes, process_id,
                                                    initialization_timeout=timeout_s),
                 f"process {process_id} of {num_processes}", f"the coordinator at {coordinator} within {timeout_s} s",
                 "Start process 0 on that address (it hosts the coordinator), check the address and port, and start "
                 "every process within the timeout.")


def _join(initialize, who: str, what: str, fix: str) -> bool:
    try:
        initialize()
    except Exception as error:  # XLA raises its own status errors for timeouts and refused connections
        raise UserError(f"{who} could not join {what} ({type(error).__name__}: {str(error).splitlines()[0][:200]}). "
                        f"{fix}") from None
    return True


def _wait_for(address: str, timeout_s: float, who: str) -> None:
    """Return once a TCP connection to ``address`` (HOST:PORT) opens; a clear error after ``timeout_s``."""
    import socket
    import time

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"the coordinator address must be HOST:PORT, got '{address}'.")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
                return
        except OSError as error:
            if time.monotonic() > deadline:
                raise UserError(f"{who} could not reach the coordinator at {address} within {timeout_s:g} s ({error}). "
                                "Start process 0 on that address (it hosts the coordinator), check the address and "
                                "port, or give more time with --connect-timeout.") from None
            time.sleep(0.5)


def _env_int(name: str) -> int | None:
    value = os.environ.get(ENV[name])
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise UserError(f"{ENV[name]}={value!r} is not a whole number.") from None


def check_same_settings(settings: dict) -> None:
    """Refuse to go on when the processes were started with different settings (their results must not mix)."""
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).digest()[:16]
    every = np.asarray(multihost_utils.process_allgather(np.frombuffer(digest, np.uint8)))
    differing = [p for p in range(len(every)) if not np.array_equal(every[p], every[jax.process_index()])]
    if differing:
        raise UserError(f"processes {differing} were started with other settings (teacher, images, steps or views) than "
                        f"process {jax.process_index()}; start every process with the same command.")


def broadcast_from_first(mask: np.ndarray) -> np.ndarray:
    """Process 0's boolean ``mask`` on every process (what process 0's results store already holds)."""
    if jax.process_count() == 1:
        return mask
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.broadcast_one_to_all(np.asarray(mask, np.int32))).astype(bool)
