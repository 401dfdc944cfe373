"""``practise-jax demo``: the whole method on a built-in default, offline, in a few minutes on 2 cores.

With the real data (``$PRACTISE_DATA``, else ``../shared/data``): the real
CIFAR-10 ResNet-20 checkpoint, compressed with 100 real training images and
evaluated on the first 1,017 exact test images. Without it: a small
ResNet-20 teacher is first trained here on a generated image task hard
enough that it lands near 90% (`practise_jax.data.synthetic`, ``hard``:
shapes and sizes under clutter and noise), then compressed the same way. The
demo says which one it used.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from model_zoo import create
from practise_jax import checkpoint
from practise_jax import data as data_lib
from practise_jax.evaluation import evaluate
from practise_jax.finetuning import FinetuneConfig, finetune
from practise_jax.pipeline import CompressConfig, compress
from practise_jax.transforms import views_for


@dataclasses.dataclass(frozen=True)
class DemoSteps:
    """How much work the demo does; the test runs the same path with fewer steps."""

    recover: int = 60
    finetune: int = 300
    teacher: int = 600  # training steps of the synthetic teacher
    latency_budget: float = 2.0  # seconds of timed calls per candidate
    eval_limit: int = 1017


def real_data_dir() -> Path | None:
    for candidate in (os.environ.get("PRACTISE_DATA"), "../shared/data", "shared/data"):
        if candidate and (Path(candidate) / "cifar10_resnets" / "resnet20-12fca82f.th").is_file():
            return Path(candidate)
    return None


def demo_config(out: Path, steps: DemoSteps, data_dir: Path | None, log=print) -> CompressConfig:
    common = dict(model="cifar_resnet20", shots=100, seed=2021, drop=2, recover_steps=steps.recover,
                  finetune_steps=steps.finetune, eval_every=max(1, steps.finetune // 2), latency_budget=steps.latency_budget)
    if data_dir is not None:
        log(f"demo: real data found in {data_dir}: the akamaster CIFAR-10 ResNet-20 checkpoint, 100 real training images.")
        return CompressConfig(weights=str(data_dir / "cifar10_resnets" / "resnet20-12fca82f.th"),
                              data=f"npz:{data_dir / 'cifar10' / 'cifar10_train_exact.npz'}",
                              eval_data=f"npz:{data_dir / 'cifar10' / 'cifar10_test_exact.npz'}", eval_limit=steps.eval_limit,
                              **common)
    log("demo: no real data found (set PRACTISE_DATA to use it): training a small ResNet-20 teacher on a generated "
        "10-class image task first.")
    teacher_dir = out / "synthetic_teacher"
    if not (teacher_dir / checkpoint.SPEC_FILE).is_file():
        train_synthetic_teacher(teacher_dir, steps.teacher, log)
    return CompressConfig(weights=str(teacher_dir), data="synthetic-hard:2000:10:1", eval_data="synthetic-hard:1000:10:2",
                          **common)


def train_synthetic_teacher(directory: Path, steps: int, log=print) -> None:
    """A narrow ResNet-20 trained from scratch with cross-entropy on the hard `synthetic` task (about 90% held out)."""
    train = data_lib.load_source("synthetic-hard:4000:10:0", image_size=32)
    model = create("cifar_resnet20", widths=(8, 16, 32))
    views = views_for(model.input_spec, 32)
    config = FinetuneConfig(loss="ce", steps=steps, lr=0.05, eval_every=steps + 1, seed=0)
    trained, _ = finetune(model, None, train.images, train.labels, config, views.train)
    held_out = data_lib.load_source("synthetic-hard:1000:10:3", image_size=32)
    log(f"demo: synthetic teacher top-1 on 1000 held-out generated images: {evaluate(trained, held_out, views, progress=False).top1:.1f}%")
    checkpoint.save_compressed(directory, trained, input_spec=dataclasses.replace(trained.input_spec, source="given"))


def run_demo(out: str | Path, steps: DemoSteps = DemoSteps(), data_dir: Path | None | str = "auto", log=print) -> dict:
    """Run the demo into ``out``; ``data_dir`` "auto" looks for the real data, None forces the synthetic teacher."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = demo_config(out, steps, real_data_dir() if data_dir == "auto" else data_dir, log)
    return compress(config, out / "run", log=log)
