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
from there. Per candidate and step that leaves the student's forward and
backward pass over its adapted part, against a full teacher and student
pass in the reference. A group's step (a stage's candidates) is one compiled
computation, whose independent per-candidate parts XLA runs side by side on
the cores (with `practise_jax.xla_cpu`'s flags on a CPU).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

import model_zoo
from model_zoo.base import ZooModel
from model_zoo.errors import UserError
from model_zoo.layers import Adaptor
from practise_jax import adaptors as adaptor_lib
from practise_jax.transforms import Views
from practise_jax.store import ResultsStore


REFERENCE_STEPS = 2000  # adaptor steps per candidate in the reference implementation
CPU_DEFAULT_STEPS = 50  # on a CPU: the cifar_resnet56 cost study (experiments/README.md) ranks as at 100 steps


STEPS_HELP = (f"adaptor steps per candidate (default: {REFERENCE_STEPS}, the reference's, on a GPU or TPU; "
              f"{CPU_DEFAULT_STEPS} on a CPU, see experiments/README.md)")


def default_steps(platform: str | None = None) -> int:
    """Adaptor steps per candidate when the user gives none: the reference's on an accelerator, fewer on a CPU.

    On 2 CPU cores 2000 steps x 24 candidates of cifar_resnet56 take many hours; the cost
    study found the ranking at 50 steps equal to that at 100 (Spearman 0.99) and at 25 close (0.96).
    """
    return CPU_DEFAULT_STEPS if (platform or jax.default_backend()) == "cpu" else REFERENCE_STEPS


@dataclasses.dataclass(frozen=True)
class RecoverConfig:
    """Adaptor-training settings; defaults are the reference's, except ``steps`` (see experiments)."""

    steps: int = REFERENCE_STEPS
    batch_size: int = 64
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    decay_every: float = 0.4  # lr x0.1 every this fraction of the steps (StepLR, stepped per iteration)
    seed: int = 0  # augmentation and batch order

    def __post_init__(self):
        if self.steps < 1:
            raise UserError(f"adaptor training needs at least 1 step, got {self.steps}.")
        if self.batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {self.batch_size}.")


def scoring_settings(model: str, weights: str | None, data: str, shots: int, seed: int, config: RecoverConfig) -> dict:
    """Everything a recoverability result depends on; keys its results store, so results never mix."""
    return {
        "model": model, "weights": str(Path(weights).resolve()) if weights else None, "data": data,
        "shots": shots, "seed": seed, "steps": config.steps, "batch_size": config.batch_size,
        "lr": config.lr, "momentum": config.momentum, "weight_decay": config.weight_decay,
    }


def step_decay_sgd(config: RecoverConfig) -> optax.GradientTransformation:
    """SGD with coupled L2 weight decay (added before momentum) and StepLR(0.4 x steps, 0.1)."""
    schedule = optax.exponential_decay(
        config.lr, transition_steps=max(1, int(config.decay_every * config.steps)), decay_rate=0.1, staircase=True)
    return optax.chain(optax.add_decayed_weights(config.weight_decay), optax.sgd(schedule, momentum=config.momentum))


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

    block: str
    sites: list
    start: str  # first adapted block; teacher and student agree before it
    graphdef: nnx.GraphDef
    adaptors: nnx.State
    frozen: nnx.State


def build_candidate(teacher: ZooModel, blocks: Sequence[str]) -> Candidate:
    """The teacher minus ``blocks`` (weights copied), with adaptors at the reference's sites.

    One block is the reference's candidate. For several, the sites are the
    union of each block's sites; a site inside another dropped block is gone.
    """
    student = model_zoo.prune(teacher, blocks)
    to_student = {original: new for new, original in zip(student.blocks, student.origin)}
    to_original = dict(zip(teacher.blocks, teacher.origin))
    sites = []
    for block in blocks:
        for site in adaptor_lib.teacher_sites(teacher, block):
            address = to_student.get(to_original[f"{site.path[0]}.{site.path[1]}"])
            if address is not None:
                group, index = address.rsplit(".", 1)
                sites.append(adaptor_lib.Site((group, int(index)) + tuple(site.path[2:]), site.kind))
    sites = list(dict.fromkeys(sites))
    adaptor_lib.attach(student, sites)
    student.eval()
    graphdef, adaptors, frozen = nnx.split(student, Adaptor, ...)
    return Candidate(",".join(blocks), sites, adaptor_lib.first_adapted_block(student, sites), graphdef, adaptors, frozen)


def _student_features(candidate: Candidate, adaptors, frozen, h):
    """The student's ``pre_gap`` features from ``h``, the input of its first adapted block."""
    return nnx.merge(candidate.graphdef, adaptors, frozen)(h, start=candidate.start)[1]["pre_gap"]


def make_lockstep_step(teacher: ZooModel, candidates: Sequence[Candidate], config: RecoverConfig, views: Views):
    """One jit-compiled training step of every candidate, from one teacher pass.

    Returns the optimizer (for ``init``) and
    ``step(adaptors, opt_states, frozen, teacher_state, images, key) -> (adaptors, opt_states, losses)``,
    lists in candidate order. The teacher pass gives the augmented batch's
    input of each student's first adapted block and the mimic target; each
    student then runs and backpropagates from there. The candidates' updates
    are independent parts of one computation, so XLA can run them side by side.
    """
    teacher_graphdef = nnx.graphdef(teacher)
    starts = _forward_order(teacher, {c.start for c in candidates})
    optimizer = step_decay_sgd(config)

    def update(candidate, adaptors, opt_state, frozen, h, target):
        loss, grads = jax.value_and_grad(lambda a: mse(_student_features(candidate, a, frozen, h), target))(adaptors)
        updates, opt_state = optimizer.update(grads, opt_state, adaptors)
        return optax.apply_updates(adaptors, updates), opt_state, loss

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(adaptors, opt_states, frozen, teacher_state, images, key):
        teacher = nnx.merge(teacher_graphdef, teacher_state)
        inputs = teacher.block_inputs(views.train(key, images), starts)
        target = teacher(inputs[starts[-1]], start=starts[-1])[1]["pre_gap"]
        results = [update(c, a, o, f, inputs[c.start], target)
                   for c, a, o, f in zip(candidates, adaptors, opt_states, frozen)]
        return [r[0] for r in results], [r[1] for r in results], [r[2] for r in results]

    return optimizer, step


def teacher_targets(teacher: ZooModel, images: np.ndarray, views: Views, batch_size: int) -> list[jax.Array]:
    """The teacher's pre_gap features of the metric view, per batch; shared by every candidate."""
    teacher.eval()
    graphdef, state = nnx.split(teacher)
    forward = jax.jit(lambda state, images: nnx.merge(graphdef, state)(views.eval(images))[1]["pre_gap"])
    return [forward(state, images[i:i + batch_size]) for i in range(0, len(images), batch_size)]


def make_metric(teacher: ZooModel, candidates: Sequence[Candidate], images: np.ndarray, views: Views, targets,
                batch_size: int):
    """``adaptors per candidate -> MSE per candidate`` over the whole metric set (element-wise, as the reference's
    batch-weighted mean of batch MSEs). Each metric batch goes through the teacher's prefix once for all candidates,
    in one compiled computation with every candidate's distance."""
    graphdef, state = nnx.split(teacher)
    starts = _forward_order(teacher, {c.start for c in candidates})
    frozen = [c.frozen for c in candidates]

    @jax.jit
    def distances(adaptors, frozen, state, images, target):
        inputs = nnx.merge(graphdef, state).block_inputs(views.eval(images), starts)
        return jnp.stack([jnp.sum(jnp.square(_student_features(c, a, f, inputs[c.start]) - target))
                          for c, a, f in zip(candidates, adaptors, frozen)])

    count = sum(t.size for t in targets)

    def metric(adaptors: Sequence[nnx.State]) -> list[float]:
        totals = sum(np.asarray(distances(list(adaptors), frozen, state, images[i:i + batch_size], target), np.float64)
                     for i, target in zip(range(0, len(images), batch_size), targets))
        return [float(total) / count for total in totals]

    return metric


def _forward_order(teacher: ZooModel, addresses) -> list[str]:
    return [a for a, _ in teacher.residual_blocks() if a in addresses]


def train_lockstep(teacher: ZooModel, drop_sets: Sequence[Sequence[str]], images: np.ndarray, views: Views,
                   config: RecoverConfig, targets=None, progress: bool = True) -> list[tuple[Candidate, nnx.State, dict]]:
    """Train the adaptors of one student per drop set, all in step: each augmented batch goes through the teacher once.

    Every student sees the batches and keys it would see alone (they depend on
    ``config.seed`` only), so this equals training them one at a time; it saves
    the teacher's pass for all but one. Returns (candidate, trained adaptors,
    figures) per drop set.
    """
    teacher.eval()
    _, teacher_state = nnx.split(teacher)
    if targets is None:
        targets = teacher_targets(teacher, images, views, config.batch_size)
    candidates = [build_candidate(teacher, blocks) for blocks in drop_sets]
    metric = make_metric(teacher, candidates, images, views, targets, config.batch_size)
    raw = metric([c.adaptors for c in candidates])

    optimizer, step = make_lockstep_step(teacher, candidates, config, views)
    adaptors = [jax.tree.map(jnp.array, c.adaptors) for c in candidates]  # own copies: the step donates its buffers
    opt_states = [optimizer.init(a) for a in adaptors]
    frozen = [c.frozen for c in candidates]
    losses = [jnp.nan] * len(candidates)
    device_images = jnp.asarray(images)
    batches = batch_indices(len(images), config.batch_size, np.random.RandomState(config.seed))
    keys = jax.random.split(jax.random.key(config.seed), config.steps)
    names = [c.block for c in candidates]
    started = time.perf_counter()
    for i in tqdm(range(config.steps), desc=f"recover {names[0]}" + (f"..{names[-1]} ({len(names)})" if len(names) > 1 else ""),
                  unit="step", disable=not progress, leave=False):
        adaptors, opt_states, losses = step(adaptors, opt_states, frozen, teacher_state, device_images[next(batches)], keys[i])
    losses = [float(loss) for loss in losses]
    train_seconds = time.perf_counter() - started
    for name, loss in zip(names, losses):
        if not np.isfinite(loss):
            raise UserError(f"adaptor training of {name} diverged (loss {loss}); lower the learning rate.")
    recovered = metric(adaptors)
    return [(candidate, adaptors[k], {"recoverability": recovered[k], "raw_distance": raw[k], "final_train_loss": losses[k],
                                      "steps": config.steps, "train_seconds": train_seconds / len(candidates)})
            for k, candidate in enumerate(candidates)]


def recover_lockstep(teacher: ZooModel, blocks: Sequence[str], images: np.ndarray, views: Views, config: RecoverConfig,
                     targets=None, progress: bool = True) -> list[dict]:
    """R of each candidate block, the candidates trained in lockstep (`train_lockstep`); one record per block."""
    trained = train_lockstep(teacher, [[b] for b in blocks], images, views, config, targets, progress)
    return [{"block": block, **figures, "adaptor_sites": [s.name for s in adaptor_lib.teacher_sites(teacher, block)]}
            for block, (_, _, figures) in zip(blocks, trained)]  # sites in the teacher's block names


def recover(teacher: ZooModel, block: str, images: np.ndarray, views: Views, config: RecoverConfig,
            targets=None, progress: bool = True) -> dict:
    """R of one candidate block: its adaptors trained, the distance before training, timings."""
    return recover_lockstep(teacher, [block], images, views, config, targets, progress)[0]


def recovered_student(teacher: ZooModel, blocks: Sequence[str], images: np.ndarray, views: Views,
                      config: RecoverConfig, progress: bool = True) -> tuple[ZooModel, dict]:
    """The student lacking ``blocks`` with its trained adaptors folded into its convs (a finetune start)."""
    [(candidate, adaptors, figures)] = train_lockstep(teacher, [blocks], images, views, config, progress=progress)
    student = nnx.merge(candidate.graphdef, adaptors, candidate.frozen)
    return adaptor_lib.fold(student), figures


@dataclasses.dataclass
class Group:
    """Candidates that share their first adapted block, scored together under ``jax.vmap``.

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


def build_group(teacher: ZooModel, blocks: Sequence[str]) -> Group:
    sites = [adaptor_lib.teacher_sites(teacher, block) for block in blocks]
    union = list(dict.fromkeys(site for group in sites for site in group))
    model = model_zoo.prune(teacher, [])  # a copy that will carry the union of adaptors
    adaptor_lib.attach(model, union)
    model.eval()
    starts = {adaptor_lib.first_adapted_block(model, group) for group in sites}
    if len(starts) != 1:
        raise ValueError(f"candidates {list(blocks)} do not share their first adapted block ({sorted(starts)})")
    graphdef, adaptors, frozen = nnx.split(model, Adaptor, ...)
    masks = jnp.asarray([[0.0 if d == block else 1.0 for d in model.droppable] for block in blocks])
    flat = nnx.to_flat_state(adaptors)
    active = nnx.from_flat_state([
        (path, variable.replace(jnp.asarray([float(_site_at(path, kind_sites)) for kind_sites in sites])))
        for path, variable in flat])
    return Group(list(blocks), sites, starts.pop(), graphdef, adaptors, frozen, masks, active)


def _site_at(path: tuple, sites: list) -> bool:
    """Whether the adaptor variable at state ``path`` (conv path + ``pre_adaptor``) is one of ``sites``."""
    kind = path[-1].removesuffix("_adaptor")
    return any(site.path == tuple(path[:-1]) and site.kind == kind for site in sites)


def _effective(adaptors, active):
    """Active adaptors as they are, inactive ones replaced by the identity (exactly)."""
    return jax.tree.map(lambda m, a: a * m + (1.0 - a) * jnp.eye(m.shape[0], dtype=m.dtype), adaptors, active)


def make_group_step(teacher_graphdef, group: Group, config: RecoverConfig, views: Views):
    """One update of every candidate of ``group`` at once: vmap over (adaptors, opt_state, mask, active)."""
    optimizer = step_decay_sgd(config)
    start = group.start

    def loss_fn(adaptors, active, mask, frozen, h, target):
        model = nnx.merge(group.graphdef, _effective(adaptors, active), frozen)
        return mse(model(h, mask, start=start)[1]["pre_gap"], target)

    def update(adaptors, opt_state, mask, active, frozen, h, target):
        loss, grads = jax.value_and_grad(loss_fn)(adaptors, active, mask, frozen, h, target)
        updates, opt_state = optimizer.update(grads, opt_state, adaptors)
        return optax.apply_updates(adaptors, updates), opt_state, loss

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(adaptors, opt_state, masks, active, frozen, teacher_state, images, key):
        teacher = nnx.merge(teacher_graphdef, teacher_state)
        x = views.train(key, images)
        h = jax.lax.stop_gradient(teacher.block_input(x, start))
        target = jax.lax.stop_gradient(teacher(h, start=start)[1]["pre_gap"])
        return jax.vmap(update, in_axes=(0, 0, 0, 0, None, None, None))(adaptors, opt_state, masks, active, frozen, h, target)

    @jax.jit
    def distance(adaptors, masks, active, frozen, teacher_state, images, target):
        teacher = nnx.merge(teacher_graphdef, teacher_state)
        h = teacher.block_input(views.eval(images), start)

        def one(adaptors, mask, active):
            model = nnx.merge(group.graphdef, _effective(adaptors, active), frozen)
            return jnp.sum(jnp.square(model(h, mask, start=start)[1]["pre_gap"] - target))

        return jax.vmap(one)(adaptors, masks, active)

    return optimizer, step, distance


def recover_group(teacher: ZooModel, blocks: Sequence[str], images: np.ndarray, views: Views, config: RecoverConfig,
                  targets=None, progress: bool = True) -> list[dict]:
    """`recover` for several candidates in one compiled computation (same batches and keys for each)."""
    teacher.eval()
    teacher_graphdef, teacher_state = nnx.split(teacher)
    if targets is None:
        targets = teacher_targets(teacher, images, views, config.batch_size)
    group = build_group(teacher, blocks)
    optimizer, step, distance = make_group_step(teacher_graphdef, group, config, views)
    count = len(blocks)
    stacked = jax.tree.map(lambda m: jnp.broadcast_to(m, (count,) + m.shape), group.adaptors)

    def metric(adaptors):
        total = sum(np.asarray(distance(adaptors, group.masks, group.active, group.frozen, teacher_state,
                                        images[i:i + config.batch_size], t))
                    for i, t in zip(range(0, len(images), config.batch_size), targets))
        return total / sum(t.size for t in targets)

    raw = metric(stacked)
    adaptors = jax.tree.map(jnp.array, stacked)
    opt_state = jax.vmap(optimizer.init)(adaptors)
    device_images = jnp.asarray(images)
    batches = batch_indices(len(images), config.batch_size, np.random.RandomState(config.seed))
    keys = jax.random.split(jax.random.key(config.seed), config.steps)
    started = time.perf_counter()
    losses = None
    for i in tqdm(range(config.steps), desc=f"recover {blocks[0]}..{blocks[-1]} ({count})", unit="step",
                  disable=not progress, leave=False):
        adaptors, opt_state, losses = step(adaptors, opt_state, group.masks, group.active, group.frozen,
                                           teacher_state, device_images[next(batches)], keys[i])
    losses = np.asarray(losses)
    train_seconds = time.perf_counter() - started
    recovered = metric(adaptors)
    records = []
    for k, block in enumerate(blocks):
        if not np.isfinite(losses[k]):
            raise UserError(f"adaptor training of {block} diverged (loss {losses[k]}); lower the learning rate.")
        records.append({
            "block": block, "recoverability": float(recovered[k]), "raw_distance": float(raw[k]),
            "final_train_loss": float(losses[k]), "steps": config.steps, "train_seconds": train_seconds / count,
            "adaptor_sites": [s.name for s in group.sites[k]], "vmapped_with": list(blocks),
        })
    return records


def score_candidates(teacher: ZooModel, blocks: Sequence[str], images: np.ndarray, views: Views,
                     config: RecoverConfig, store: ResultsStore | None = None, progress: bool = True,
                     vmap: bool = False) -> list[dict]:
    """R for every candidate; finished candidates are read back from ``store``.

    The candidates of a stage are trained together, and stored when they
    finish: by default in lockstep (`train_lockstep`: one teacher pass per
    step serves them all, results equal to training them one by one); with
    ``vmap=True`` in one compiled computation over dynamic block masks
    (`recover_group`, candidates that share their first adapted block).
    """
    pending = [b for b in blocks if store is None or b not in store]
    done = {b: store.get(b) for b in blocks if store is not None and b in store}
    targets = teacher_targets(teacher, images, views, config.batch_size) if pending else None
    units = _stages(teacher, pending) if vmap else stage_groups(pending)
    recover_unit = recover_group if vmap else recover_lockstep
    for unit in tqdm(units, desc="candidates", unit="group", disable=not (progress and units)):
        for record in recover_unit(teacher, unit, images, views, config, targets=targets, progress=progress):
            if store is not None:
                store.put(record["block"], record)
            done[record["block"]] = record
    return [done[b] for b in blocks]


def stage_groups(blocks: Sequence[str]) -> list[list[str]]:
    """Candidates grouped by stage (``layer2.3`` -> ``layer2``), in order."""
    groups: dict[str, list[str]] = {}
    for block in blocks:
        groups.setdefault(block.rsplit(".", 1)[0], []).append(block)
    return list(groups.values())


def _stages(teacher: ZooModel, blocks: Sequence[str]) -> list[list[str]]:
    """Candidates grouped by the block where their adaptors start (their stage)."""
    groups: dict[str, list[str]] = {}
    for block in blocks:
        start = adaptor_lib.first_adapted_block(teacher, adaptor_lib.teacher_sites(teacher, block))
        groups.setdefault(start, []).append(block)
    return list(groups.values())
