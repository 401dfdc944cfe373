"""What a compression run is asked to do: `CompressConfig`, checked before any work starts."""

from __future__ import annotations

import dataclasses

from practise_jax import defaults, selection
from practise_jax.errors import UserError
from practise_jax.finetuning import FinetuneConfig
from practise_jax.recoverability import RecoverConfig
from practise_jax.transforms import normalization

METHODS = ("practise", "progressive", "first-k", "random", "influence", "greedy", "filter")
RANKED_BY_DAMAGE = ("practise", "progressive", "influence", "greedy")  # criteria divided by tau: they need it for any amount
INITS = ("plain", "folded")


@dataclasses.dataclass(frozen=True)
class CompressConfig:
    """One run: model and weights, the tiny set, what to drop and how, training and latency settings.

    ``weights``: a weight file, a practise-jax checkpoint folder, or None
    (random weights); ``rename`` and ``weights_key`` say how to read the
    file, ``mean``/``std`` the normalisation it was trained with. ``recover_steps`` None means `defaults.adaptor_steps` for
    this platform. ``tau_from``: a profile or scores CSV to read tau from
    instead of measuring it (say, measured on the deployment device).
    ``scores_from``: the recoverability store (or folder) of a `score` run
    with the same teacher, tiny set and settings.
    """

    model: str
    weights: str | None
    data: str
    rename: tuple[str, ...] = ()  # REGEX=REPLACEMENT rules mapping the weight file's keys onto the model's
    weights_key: str | None = None  # which state dict of the file, when it holds several
    mean: tuple[float, ...] | None = None  # the input normalisation the weights were trained with;
    std: tuple[float, ...] | None = None  # None: the model's (registry default, or the checkpoint's)
    eval_data: str | None = None
    eval_limit: int | None = None
    shots: int = defaults.SHOTS
    seed: int = defaults.SEED
    balanced: bool = False
    method: str = "practise"
    drop: int | None = None
    speedup: float | None = None
    blocks: tuple[str, ...] = ()
    finetune: str = "mimic"
    init: str = "plain"
    recover_steps: int | None = None
    finetune_steps: int = defaults.FINETUNE_STEPS
    finetune_lr: float | None = None
    mimic_at: tuple[str, ...] = ("pre_gap",)  # mimic finetune: the features matched ("stages": every stage's output)
    kd_weight: float = 0.0  # mimic finetune: plus this x KD on the teacher's logits
    reestimate_bn: bool = False  # BatchNorm statistics from the tiny set before finetuning
    batch_size: int = defaults.BATCH_SIZE
    eval_every: int = defaults.EVAL_EVERY
    latency_batch_size: int = defaults.LATENCY_BATCH_SIZE
    latency_budget: float = defaults.LATENCY_BUDGET_S
    latency_threads: int = defaults.LATENCY_CPU_THREADS
    tau_from: str | None = None
    rounds: int = defaults.PROGRESSIVE_ROUNDS  # progressive: the target split over this many drops
    round_finetune_steps: int = defaults.PROGRESSIVE_FINETUNE_STEPS  # progressive: mimic steps between rounds
    target_tolerance: float | None = defaults.TARGET_TOLERANCE  # None: trust the sum of single-block taus
    devices: int | None = None  # local devices to spread scoring and finetuning over (None: all)
    vmap: bool = False
    scores_from: str | None = None

    @property
    def adaptor_steps(self) -> int:
        return defaults.adaptor_steps() if self.recover_steps is None else self.recover_steps

    def recover_config(self) -> RecoverConfig:
        return RecoverConfig(steps=self.adaptor_steps, batch_size=self.batch_size, seed=self.seed)

    def finetune_config(self) -> FinetuneConfig:
        return FinetuneConfig(loss=self.finetune, steps=self.finetune_steps, batch_size=self.batch_size,
                              lr=self.finetune_lr, eval_every=self.eval_every, seed=self.seed, mimic_at=tuple(self.mimic_at),
                              kd_weight=self.kd_weight, reestimate_bn=self.reestimate_bn)

    def normalization(self):
        """``(mean, std)`` as given, checked, or None."""
        return normalization(self.mean, self.std)

    def check(self) -> None:
        self.normalization()
        if self.method not in METHODS:
            raise UserError(f"unknown method '{self.method}'; choose one of: {', '.join(METHODS)}.")
        if self.init not in INITS:
            raise UserError(f"unknown finetune start '{self.init}'; choose one of: {', '.join(INITS)}.")
        if sum(x is not None and x != () for x in (self.drop, self.speedup, self.blocks)) != 1:
            raise UserError("say what to drop with exactly one of --drop K, --speedup F or --blocks a,b.")
        if self.speedup is not None:
            selection.check_target(self.speedup)
        if self.method == "progressive" and (self.speedup is None or self.rounds < 1 or self.round_finetune_steps < 0):
            raise UserError("--method progressive drops in rounds to a latency target: give --speedup F, --rounds N "
                            "(at least 1) and --round-finetune-steps S (0 or more).")
        if self.target_tolerance is not None and not 0 < self.target_tolerance < 1:
            raise UserError(f"the target tolerance is a fraction between 0 and 1 (0.01 = 1 point), got {self.target_tolerance}.")
        if self.method == "filter" and (self.speedup is None or self.init != "plain"):
            raise UserError("--method filter prunes inner filters to a latency target: give --speedup F "
                            "(not --drop or --blocks) and the plain finetune start.")
        self.finetune_config()  # validates
        self.recover_config()

    @property
    def needs_tau(self) -> bool:
        """Single-block tau is needed to score (practise) or to reach a latency target by dropping blocks."""
        return self.method != "filter" and (self.speedup is not None or (self.method in RANKED_BY_DAMAGE and not self.blocks))

    @property
    def needs_scores(self) -> bool:
        return self.method in ("practise", "progressive") and not self.blocks

    @property
    def fits_measured_target(self) -> bool:
        """A latency target met as measured here: not with --tau from elsewhere (that device is not this one)."""
        return (self.speedup is not None and self.target_tolerance is not None and not self.blocks
                and self.method != "filter" and not self.tau_from)

    @property
    def keras_teacher(self) -> bool:
        """The teacher comes from a Keras file, so the student goes back to Keras too."""
        from model_zoo.convert.keras_import import is_keras_file

        return is_keras_file(self.weights)
