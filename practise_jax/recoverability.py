"""Recoverability R(B) of each candidate block (PRACTISE_SPEC.md section 4).

For a candidate B: drop it from the teacher, put identity adaptors around the
gap, train *only the adaptors* so the student's ``pre_gap`` features mimic the
teacher's (MSE, both in eval mode, SGD lr 0.02 momentum 0.9 weight decay 1e-4,
lr x0.1 every 40% of the steps), then R = the same MSE over the tiny set's
metric view. Pure functions over (graphdef, state) pytrees.

What does not change is computed once. The teacher's metric-view targets are
shared by every candidate. Candidates are trained in lockstep: every
candidate sees the same batches and augmentation keys, so one teacher pass
per step gives them all their target and the input of the block where each
student begins (the frozen prefix before its first adapted block, which
teacher and student share); each student then runs and backpropagates only
from there. A group's step (a stage's candidates) is one compiled
computation, whose independent per-candidate parts XLA runs side by side.

``vmap=True`` trains a group of candidates that share their first adapted
block as one batched computation instead: the teacher with the candidate
dropped by a dynamic block mask and identity adaptors at the union of the
group's sites, inactive ones replaced by the identity.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import time
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from practise_jax import adaptors as adaptor_lib
from practise_jax import defaults, devices, protocol, surgery
from practise_jax.adaptors import Adaptor
from practise_jax.errors import UserError
from practise_jax.store import ResultsStore
from practise_jax.transforms import Views


@dataclasses.dataclass(frozen=True)
class RecoverConfig:
    """Adaptor-training settings: the reference's, except ``steps`` (`defaults.adaptor_steps`: fewer on a CPU)."""

    steps: int = dataclasses.field(default_factory=defaults.adaptor_steps)
    batch_size: int = defaults.BATCH_SIZE
    lr: float = defaults.ADAPTOR_LR
    momentum: float = defaults.MOMENTUM
    weight_decay: float = defaults.WEIGHT_DECAY
    decay_every: float = defaults.DECAY_EVERY
    seed: int = 0  # augmentation and batch order

    def __post_init__(self):
        if self.steps < 1:
            raise UserError(f"adaptor training needs at least 1 step, got {self.steps}.")
        if self.batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {self.batch_size}.")


def fingerprint(*arrays_or_trees) -> str:
    """A sha256 of arrays (shapes, dtypes and bytes) and of the paths of pytrees holding them."""
    digest = hashlib.sha256()
    for item in arrays_or_trees:
        for path, leaf in jax.tree_util.tree_flatten_with_path(item)[0]:
            array = np.asarray(jax.random.key_data(leaf) if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key) else leaf)
            digest.update(f"{jax.tree_util.keystr(path)}|{array.dtype}|{array.shape}|".encode())
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:24]


def scoring_settings(teacher: nnx.Module, images: np.ndarray, views: Views, config: RecoverConfig) -> dict:
    """Everything R depends on, from the inputs themselves: keys a results store, so results never mix.

    The teacher (its class and every weight), the tiny set's pixels (so the
    draw, its size and the stored image size are all in), the views (recipe,
    normalisation) and the adaptor-training settings.
    """
    return {
        "teacher": f"{type(teacher).__qualname__}:{fingerprint(nnx.state(teacher, (nnx.Param, nnx.BatchStat)))}",
        "images": f"{tuple(images.shape)}:{fingerprint(np.asarray(images))}",
        "views": dataclasses.asdict(views),
        **{k: v for k, v in dataclasses.asdict(config).items()},
    }


def step_decay_sgd(lr: float, steps: int, *, momentum: float = defaults.MOMENTUM, weight_decay: float = defaults.WEIGHT_DECAY,
                   decay_every: float = defaults.DECAY_EVERY) -> optax.GradientTransformation:
    """SGD with coupled L2 weight decay (added before momentum) and StepLR(decay_every x steps, 0.1)."""
    schedule = optax.exponential_decay(lr, transition_steps=max(1, int(decay_every * steps)), decay_rate=0.1, staircase=True)
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(schedule, momentum=momentum))


def adaptor_optimizer(config: RecoverConfig) -> optax.GradientTransformation:
    return step_decay_sgd(config.lr, config.steps, momentum=config.momentum, weight_decay=config.weight_decay,
                          decay_every=config.decay_every)


def batch_indices(count: int, batch_size: int, rng: np.random.RandomState) -> Iterator[np.ndarray]:
    """Endless shuffled batches, dropping the last partial batch once the set holds a full one."""
    while True:
        order = rng.permutation(count)
        if count <= batch_size:
            yield order
            continue
        for start in range(0, count - batch_size + 1, batch_size):
            yield order[start:start + batch_size]


def mse(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.mean(jnp.square(a.astype(jnp.float32) - b.astype(jnp.float32)))


@dataclasses.dataclass
class Candidate:
    """A student lacking some blocks, with identity adaptors around the gaps, split for pure training."""

    blocks: tuple[str, ...]
    sites: list
    start: str  # first adapted block; teacher and student agree before it
    graphdef: nnx.GraphDef
    adaptors: nnx.State
    frozen: nnx.State

    @property
    def name(self) -> str:
        return ",".join(self.blocks)


def build_candidate(teacher: nnx.Module, blocks: Sequence[str]) -> Candidate:
    """The teacher minus ``blocks`` (weights shared, not copied), with identity adaptors at the reference's sites."""
    blocks = protocol.check_drop_set(teacher, blocks)
    sites = adaptor_lib.placement(teacher, blocks)
    student = adaptor_lib.attach(surgery.drop(teacher, blocks), sites)
    student.eval()
    graphdef, adaptors, frozen = nnx.split(student, Adaptor, ...)
    return Candidate(blocks, sites, adaptor_lib.first_adapted_block(student, sites), graphdef, adaptors, frozen)


def _student_features(candidate: Candidate, adaptors, frozen, h):
    """The student's ``pre_gap`` features from ``h``, the input of its first adapted block."""
    return nnx.merge(candidate.graphdef, adaptors, frozen)(h, start=candidate.start)[1]["pre_gap"]


def _forward_order(teacher: nnx.Module, wanted) -> list[str]:
    return [b.address for b in protocol.blocks(teacher) if b.address in wanted]


def make_lockstep_step(teacher: nnx.Module, candidates: Sequence[Candidate], config: RecoverConfig, views: Views,
                       batch_sharding=None):
    """One jit-compiled training step of every candidate, from one teacher pass.

    Returns the optimizer (for ``init``) and
    ``step(adaptors, opt_states, frozen, teacher_state, images, index, key_data) -> (adaptors, opt_states, losses)``,
    lists in candidate order; the batch ``images[index]`` is gathered inside the step (``key_data``: the raw
    data of its augmentation key, so it can be placed like any array).
    """
    teacher_graphdef = nnx.graphdef(teacher)
    starts = _forward_order(teacher, {c.start for c in candidates})
    optimizer = adaptor_optimizer(config)

    def update(candidate, adaptors, opt_state, frozen, h, target):
        loss, grads = jax.value_and_grad(lambda a: mse(_student_features(candidate, a, frozen, h), target))(adaptors)
        updates, opt_state = optimizer.update(grads, opt_state, adaptors)
        return optax.apply_updates(adaptors, updates), opt_state, loss

    def split_batch(x):
        return x if batch_sharding is None else jax.lax.with_sharding_constraint(x, batch_sharding)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(adaptors, opt_states, frozen, teacher_state, images, index, key_data):
        model = nnx.merge(teacher_graphdef, teacher_state)
        inputs = model.block_inputs(split_batch(views.train(jax.random.wrap_key_data(key_data), images[index])), starts)
        target = model(inputs[starts[-1]], start=starts[-1])[1]["pre_gap"]
        results = [update(c, a, o, f, inputs[c.start], target)
                   for c, a, o, f in zip(candidates, adaptors, opt_states, frozen)]
        return [r[0] for r in results], [r[1] for r in results], jnp.stack([r[2] for r in results])

    return optimizer, step


def teacher_targets(teacher: nnx.Module, images: np.ndarray, views: Views, batch_size: int) -> list[jax.Array]:
    """The teacher's pre_gap features of the metric view, per batch; shared by every candidate."""
    teacher.eval()
    graphdef, state = nnx.split(teacher)
    forward = jax.jit(lambda state, images: nnx.merge(graphdef, state)(views.eval(images))[1]["pre_gap"])
    return [forward(state, images[i:i + batch_size]) for i in range(0, len(images), batch_size)]


def make_metric(teacher: nnx.Module, candidates: Sequence[Candidate], images: np.ndarray, views: Views, targets,
                batch_size: int, placement: devices.Placement = devices.Placement()):
    """``adaptors per candidate -> MSE per candidate`` over the whole metric set (element-wise, as the reference's
    batch-weighted mean of batch MSEs), every candidate's distance from one teacher prefix pass per batch.

    With a mesh, each metric batch is split over its batch axis where it divides evenly."""
    graphdef, state = nnx.split(teacher)
    starts = _forward_order(teacher, {c.start for c in candidates})
    frozen, state = placement.everywhere(([c.frozen for c in candidates], state))

    @functools.cache  # one compiled function per split, not per batch: the batches of a size share it
    def distances_for(split):
        @jax.jit
        def distances(adaptors, frozen, state, images, target):
            x = views.eval(images)
            x = x if split is None else jax.lax.with_sharding_constraint(x, split)
            inputs = nnx.merge(graphdef, state).block_inputs(x, starts)
            return jnp.stack([jnp.sum(jnp.square(_student_features(c, a, f, inputs[c.start]) - target))
                              for c, a, f in zip(candidates, adaptors, frozen)])

        return distances

    batches = []
    for i, target in zip(range(0, len(images), batch_size), targets):
        chunk = images[i:i + batch_size]
        try:
            split = placement.batch_split(len(chunk))
        except UserError:  # a last, uneven metric batch is computed whole on every device
            split = None
        batches.append((distances_for(split), placement.everywhere((chunk, np.asarray(target)))))
    count = sum(t.size for t in targets)

    def metric(adaptors: Sequence[nnx.State]) -> list[float]:
        totals = sum(devices.fetch(distances(list(adaptors), frozen, state, *arrays)).astype(np.float64)
                     for distances, arrays in batches)
        return [float(total) / count for total in totals]

    return metric


def _progress_label(names: Sequence[str]) -> str:
    return f"recover {names[0]}" + (f"..{names[-1]} ({len(names)})" if len(names) > 1 else "")


def train_lockstep(teacher: nnx.Module, drop_sets: Sequence[Sequence[str]], images: np.ndarray, views: Views,
                   config: RecoverConfig, targets=None, progress: bool = False,
                   mesh=None) -> list[tuple[Candidate, nnx.State, dict]]:
    """Train the adaptors of one student per drop set, all in step: each augmented batch goes through the teacher once.

    Every student sees the batches and keys it would see alone (they depend on
    ``config.seed`` only), so this equals training them one at a time. Returns
    (candidate, trained adaptors, figures) per drop set. The losses stay on the
    device until the last step (no host sync per step). With a ``mesh``
    (`practise_jax.devices.batch_mesh`, of one or several processes) every
    batch is split over its devices, data-parallel.
    """
    teacher.eval()
    _, teacher_state = nnx.split(teacher)
    if targets is None:
        targets = teacher_targets(teacher, images, views, config.batch_size)
    placement = devices.Placement(mesh)
    candidates = [build_candidate(teacher, blocks) for blocks in drop_sets]
    metric = make_metric(teacher, candidates, images, views, targets, config.batch_size, placement)
    raw = metric([placement.everywhere(c.adaptors) for c in candidates])

    split = placement.batch_split(min(config.batch_size, len(images)))
    optimizer, step = make_lockstep_step(teacher, candidates, config, views, split)
    adaptors = [jax.tree.map(jnp.array, c.adaptors) for c in candidates]  # own copies: the step donates its buffers
    adaptors, opt_states, frozen, teacher_state, device_images = placement.everywhere(
        (adaptors, [optimizer.init(a) for a in adaptors], [c.frozen for c in candidates], teacher_state, images))
    losses = None
    batches = batch_indices(len(images), config.batch_size, np.random.RandomState(config.seed))
    keys = np.asarray(jax.random.key_data(jax.random.split(jax.random.key(config.seed), config.steps)))
    names = [c.name for c in candidates]
    started = time.perf_counter()
    for i in tqdm(range(config.steps), desc=_progress_label(names), unit="step", disable=not progress, leave=False):
        adaptors, opt_states, losses = step(adaptors, opt_states, frozen, teacher_state, device_images,
                                            *placement.everywhere((next(batches), keys[i])))
    losses = devices.fetch(losses).astype(np.float64)
    train_seconds = time.perf_counter() - started
    for name, loss in zip(names, losses):
        if not np.isfinite(loss):
            raise UserError(f"adaptor training of {name} diverged (loss {loss}); lower the learning rate.")
    recovered = metric(adaptors)
    return [(candidate, adaptors[k], {"recoverability": recovered[k], "raw_distance": raw[k],
                                      "final_train_loss": float(losses[k]), "steps": config.steps,
                                      "train_seconds": train_seconds / len(candidates),
                                      "adaptor_sites": [s.name for s in candidate.sites]})
            for k, candidate in enumerate(candidates)]


def recovered_student(teacher: nnx.Module, blocks: Sequence[str], images: np.ndarray, views: Views,
                      config: RecoverConfig, progress: bool = False) -> tuple[nnx.Module, dict]:
    """The student lacking ``blocks`` with its trained adaptors folded into its convs (a finetune start)."""
    [(candidate, adaptors, figures)] = train_lockstep(teacher, [blocks], images, views, config, progress=progress)
    student = nnx.merge(candidate.graphdef, jax.tree.map(np.asarray, adaptors), candidate.frozen)
    return adaptor_lib.fold(student), figures


# --------------------------------------------------------------------------- the vmapped group


@dataclasses.dataclass
class Group:
    """Candidates that share their first adapted block, trained as one batched computation.

    The student is the teacher itself with the candidate dropped by a dynamic
    block mask, and identity adaptors at the union of the candidates' sites.
    ``active[k]`` says which sites candidate k trains: an inactive adaptor is
    replaced by the identity in the forward pass, so it has no effect and no
    gradient, and each candidate computes exactly what its own static student does.
    """

    blocks: list[str]
    sites: list[list]
    start: str
    graphdef: nnx.GraphDef
    adaptors: nnx.State  # one copy; stacked per candidate when training
    frozen: nnx.State
    masks: jax.Array  # (K, len(droppable)) block masks
    active: nnx.State  # per site, (K,) 0/1


def build_group(teacher: nnx.Module, blocks: Sequence[str]) -> Group:
    sites = [adaptor_lib.placement(teacher, block) for block in blocks]
    union = list(dict.fromkeys(site for group in sites for site in group))
    model = adaptor_lib.attach(nnx.clone(teacher), union)
    model.eval()
    starts = {adaptor_lib.first_adapted_block(model, group) for group in sites}
    if len(starts) != 1:
        raise ValueError(f"candidates {list(blocks)} do not share their first adapted block ({sorted(starts)})")
    graphdef, adaptors, frozen = nnx.split(model, Adaptor, ...)
    masks = jnp.stack([protocol.mask_of(model, [block]) for block in blocks])
    active = nnx.from_flat_state([
        (path, variable.replace(jnp.asarray([float(_site_at(path, own)) for own in sites])))
        for path, variable in nnx.to_flat_state(adaptors)])
    return Group(list(blocks), sites, starts.pop(), graphdef, adaptors, frozen, masks, active)


def _site_at(path: tuple, sites: list) -> bool:
    """Whether the adaptor variable at state ``path`` (the wrapper's path + ``pre``/``post``) is one of ``sites``."""
    conv = ".".join(str(p) for p in path[:-1] if p != "layers")
    return any(site.path == conv and site.kind == path[-1] for site in sites)


def _effective(adaptors, active):
    """Active adaptors as they are, inactive ones replaced by the identity (exactly)."""
    return jax.tree.map(lambda m, a: a * m + (1.0 - a) * jnp.eye(m.shape[0], dtype=m.dtype), adaptors, active)


def make_group_step(teacher_graphdef, group: Group, config: RecoverConfig, views: Views, batch_sharding=None):
    """One update of every candidate of ``group`` at once: vmap over (adaptors, opt_state, mask, active).

    ``batch_sharding`` (a mesh's batch axis) splits each augmented batch over
    devices; XLA then reduces each candidate's gradient across them.
    """
    optimizer = adaptor_optimizer(config)
    start = group.start

    def loss_fn(adaptors, active, mask, frozen, h, target):
        model = nnx.merge(group.graphdef, _effective(adaptors, active), frozen)
        return mse(model(h, mask, start=start)[1]["pre_gap"], target)

    def update(adaptors, opt_state, mask, active, frozen, h, target):
        loss, grads = jax.value_and_grad(loss_fn)(adaptors, active, mask, frozen, h, target)
        updates, opt_state = optimizer.update(grads, opt_state, adaptors)
        return optax.apply_updates(adaptors, updates), opt_state, loss

    def split_batch(x):
        return x if batch_sharding is None else jax.lax.with_sharding_constraint(x, batch_sharding)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(adaptors, opt_state, masks, active, frozen, teacher_state, images, index, key_data):
        teacher = nnx.merge(teacher_graphdef, teacher_state)
        x = split_batch(views.train(jax.random.wrap_key_data(key_data), images[index]))
        h = jax.lax.stop_gradient(teacher.block_input(x, start))
        target = jax.lax.stop_gradient(teacher(h, start=start)[1]["pre_gap"])
        return jax.vmap(update, in_axes=(0, 0, 0, 0, None, None, None))(adaptors, opt_state, masks, active, frozen, h, target)

    @jax.jit
    def distance(adaptors, masks, active, frozen, teacher_state, images, target):
        x = views.eval(images)  # metric batches are split only where they divide evenly
        x = split_batch(x) if batch_sharding is not None and x.shape[0] % batch_sharding.mesh.shape[devices.BATCH] == 0 else x
        h = nnx.merge(teacher_graphdef, teacher_state).block_input(x, start)

        def one(adaptors, mask, active):
            model = nnx.merge(group.graphdef, _effective(adaptors, active), frozen)
            return jnp.sum(jnp.square(model(h, mask, start=start)[1]["pre_gap"] - target))

        return jax.vmap(one)(adaptors, masks, active)

    return optimizer, step, distance


def recover_group(teacher: nnx.Module, blocks: Sequence[str], images: np.ndarray, views: Views, config: RecoverConfig,
                  targets=None, progress: bool = False, mesh=None) -> list[dict]:
    """R of several candidates in one batched computation (same batches and keys for each); one record per block.

    With a ``mesh`` (`practise_jax.devices.candidate_mesh`) the candidates are
    spread over its ``candidates`` axis (the group padded with copies of its
    last candidate to fill it) and each batch over its ``batch`` axis; every
    process of a multi-process run computes its own shards.
    """
    teacher.eval()
    teacher_graphdef, teacher_state = nnx.split(teacher)
    if targets is None:
        targets = teacher_targets(teacher, images, views, config.batch_size)
    count = len(blocks)
    placement = devices.Placement(mesh)
    across = 1 if mesh is None else mesh.shape[devices.CANDIDATES]
    padded = list(blocks) + [blocks[-1]] * (-count % across)
    group = build_group(teacher, padded)
    optimizer, step, distance = make_group_step(teacher_graphdef, group, config, views,
                                                placement.batch_split(min(config.batch_size, len(images))))
    stacked = jax.tree.map(lambda m: np.broadcast_to(np.asarray(m), (len(padded),) + m.shape), group.adaptors)
    stacked, masks, active = placement.by_candidate((stacked, group.masks, group.active))
    frozen, teacher_state, device_images = placement.everywhere((group.frozen, teacher_state, images))
    metric_batches = [placement.everywhere((images[i:i + config.batch_size], np.asarray(t)))
                      for i, t in zip(range(0, len(images), config.batch_size), targets)]

    def metric(adaptors):
        total = sum(devices.fetch(distance(adaptors, masks, active, frozen, teacher_state, batch, target)).astype(np.float64)
                    for batch, target in metric_batches)
        return total / sum(t.size for t in targets)

    raw = metric(stacked)
    adaptors = jax.tree.map(jnp.copy, stacked)  # own buffers: the step donates them
    opt_state = jax.jit(jax.vmap(optimizer.init))(adaptors)
    batches = batch_indices(len(images), config.batch_size, np.random.RandomState(config.seed))
    keys = np.asarray(jax.random.key_data(jax.random.split(jax.random.key(config.seed), config.steps)))
    started = time.perf_counter()
    losses = None
    for i in tqdm(range(config.steps), desc=_progress_label(blocks), unit="step", disable=not progress, leave=False):
        adaptors, opt_state, losses = step(adaptors, opt_state, masks, active, frozen, teacher_state, device_images,
                                           *placement.everywhere((next(batches), keys[i])))
    losses = devices.fetch(losses).astype(np.float64)
    train_seconds = time.perf_counter() - started
    recovered = metric(adaptors)
    records = []
    for k, block in enumerate(blocks):
        if not np.isfinite(losses[k]):
            raise UserError(f"adaptor training of {block} diverged (loss {losses[k]}); lower the learning rate.")
        records.append({
            "block": block, "recoverability": float(recovered[k]), "raw_distance": float(raw[k]),
            "final_train_loss": float(losses[k]), "steps": config.steps, "train_seconds": train_seconds / count,
            "adaptor_sites": [s.name for s in group.sites[k]],
        })
    return records


# --------------------------------------------------------------------------- every candidate, resumable


def recover_lockstep(teacher: nnx.Module, blocks: Sequence[str], images: np.ndarray, views: Views, config: RecoverConfig,
                     targets=None, progress: bool = False, mesh=None) -> list[dict]:
    """R of each candidate block, the candidates trained in lockstep (`train_lockstep`); one record per block."""
    trained = train_lockstep(teacher, [[b] for b in blocks], images, views, config, targets, progress, mesh)
    return [{"block": block, **figures} for block, (_, _, figures) in zip(blocks, trained)]


def score_candidates(teacher: nnx.Module, blocks: Sequence[str], images: np.ndarray, views: Views,
                     config: RecoverConfig, store: ResultsStore | None = None, progress: bool = False,
                     vmap: bool = False, spread: Sequence | None = None, shard: str = "auto") -> list[dict]:
    """R for every candidate; finished candidates are read back from ``store`` and new ones written as they finish.

    The candidates of a group (those whose adaptors start at the same block:
    a stage) are trained together: by default in lockstep; with ``vmap=True``
    as one batched computation over dynamic block masks. With ``spread`` (a
    list of devices, of every process) the work goes over a mesh of them:
    ``shard="candidates"`` splits the batched computation's candidates (and
    the batch, where a group has fewer candidates than devices); ``"batch"``
    keeps the lockstep step and splits each batch; ``"auto"`` takes
    `devices.preferred_shard` (the batch on a CPU, where it measured faster;
    the candidates elsewhere). With several
    processes only process 0 keeps a store; it says which candidates are done
    and its records go to every process.
    """
    held = devices.broadcast_from_first(np.asarray([store is not None and b in store for b in blocks]))
    pending = [b for b, done_before in zip(blocks, held) if not done_before]
    done = {b: store.get(b) for b, done_before in zip(blocks, held) if done_before and store is not None}
    targets = teacher_targets(teacher, images, views, config.batch_size) if pending else None
    units = groups(teacher, pending)
    for unit in tqdm(units, desc="candidates", unit="group", disable=not (progress and units)):
        if spread and devices.preferred_shard(spread, shard) == "candidates":
            recover_unit = functools.partial(recover_group, mesh=devices.candidate_mesh(list(spread), len(unit)))
        elif spread:
            recover_unit = functools.partial(recover_lockstep, mesh=devices.batch_mesh(list(spread)))
        else:
            recover_unit = recover_group if vmap else recover_lockstep
        for record in recover_unit(teacher, unit, images, views, config, targets=targets, progress=progress):
            if store is not None:
                store.put(record["block"], record)
            done[record["block"]] = record
    return share_records(teacher, blocks, done)


SHARED_FIGURES = ("recoverability", "raw_distance", "final_train_loss", "train_seconds")


def share_records(teacher: nnx.Module, blocks: Sequence[str], done: dict) -> list[dict]:
    """Every block's record on every process: process 0's figures broadcast (others may lack the stored ones)."""
    if jax.process_count() == 1:
        return [done[b] for b in blocks]
    from jax.experimental import multihost_utils

    figures = np.asarray([[done[b][f] if b in done else np.nan for f in SHARED_FIGURES] for b in blocks], np.float64)
    figures = np.asarray(multihost_utils.broadcast_one_to_all(figures))
    return [{"block": b, **dict(zip(SHARED_FIGURES, map(float, row))), "steps": done.get(b, {}).get("steps"),
             "adaptor_sites": [s.name for s in adaptor_lib.placement(teacher, b)]} for b, row in zip(blocks, figures)]


def groups(teacher: nnx.Module, blocks: Sequence[str]) -> list[list[str]]:
    """Candidates grouped by the block where their adaptors start (for a ResNet, their stage), in order."""
    grouped: dict[str, list[str]] = {}
    for block in blocks:
        start = adaptor_lib.first_adapted_block(teacher, adaptor_lib.placement(teacher, block))
        grouped.setdefault(start, []).append(block)
    return list(grouped.values())
