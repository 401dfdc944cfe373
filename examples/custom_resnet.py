"""A network the zoo does not have, compressed from a script: your own CIFAR ResNet, your own checkpoint.

The model below is written as a user would write it: its own attribute names
(``stem_conv``, ``stages``, ``conv_a``/``norm_a``, ``fc``) and a shortcut that
zero-pads the channels *at the end* before subsampling (the zoo's option-A
shortcut pads both sides). To take part it follows the model protocol: it
subclasses `practise_jax.ResidualNetwork` (stem, blocks, classifier; the
forward pass with block masks comes with it), lists its blocks with
addresses, says which may be dropped, and gives each block a
`practise_jax.Stream` naming the convs that write and read the residual
stream. Nothing in practise_jax/ or model_zoo/ knows this model.

Its weights come from a PyTorch state dict of *its* layout (keys such as
``stages.1.3.bn_a.running_mean``), mapped onto the NNX parameters by rename
rules (``RENAME``). With ``../shared/data`` present the script writes such a
file from the real CIFAR-10 ResNet-20 (`stand_in_checkpoint`: the same
trained network with its channels laid out for the end-padded shortcut), so
the converted model must reproduce the checkpoint's 91.64% top-1 on the first
1,017 test images; without the data, random weights and a generated task.

    python examples/custom_resnet.py                       # about 4 minutes on 2 CPU cores
    python examples/custom_resnet.py --shots 32 --adaptor-steps 2 --finetune-steps 2 --latency-repeats 1 --drop 2  # seconds
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

import model_zoo
import practise_jax as pj
from practise_jax import data, defaults, jit_cache, latency, xla_cpu

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # what the checkpoint was trained with


# --------------------------------------------------------------------------- the model, as you would write it

class Unit(nnx.Module):
    """conv_a -> norm_a -> relu -> conv_b -> norm_b, plus the shortcut, then relu."""

    def __init__(self, cin: int, cout: int, stride: int, *, rngs: nnx.Rngs):
        conv = dict(kernel_size=(3, 3), padding=((1, 1), (1, 1)), use_bias=False, rngs=rngs)
        norm = dict(momentum=0.9, epsilon=1e-5, rngs=rngs)
        self.conv_a, self.norm_a = nnx.Conv(cin, cout, strides=stride, **conv), nnx.BatchNorm(cout, **norm)
        self.conv_b, self.norm_b = nnx.Conv(cout, cout, **conv), nnx.BatchNorm(cout, **norm)
        self.widen = cout - cin if stride != 1 or cin != cout else None
        # the protocol: conv_b writes the residual stream, conv_a reads it; identity shortcut unless it widens
        self.stream = pj.Stream(writers=("conv_b",), readers=("conv_a",), identity=self.widen is None)

    def __call__(self, x):
        y = self.norm_b(self.conv_b(nnx.relu(self.norm_a(self.conv_a(x)))))
        if self.widen is not None:  # zero channels appended at the end, then every other pixel
            x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, self.widen)))[:, ::2, ::2, :]
        return nnx.relu(x + y)


class MyResNet(pj.ResidualNetwork):
    head = "fc"

    def __init__(self, depth: int = 20, widths=(16, 32, 64), num_classes: int = 10, *, rngs: nnx.Rngs):
        n = (depth - 2) // 6
        self.stem_conv = nnx.Conv(3, widths[0], (3, 3), padding=((1, 1), (1, 1)), use_bias=False, rngs=rngs)
        self.stem_norm = nnx.BatchNorm(widths[0], momentum=0.9, epsilon=1e-5, rngs=rngs)
        stages, cin = [], widths[0]
        for s, cout in enumerate(widths):
            stages.append(nnx.List([Unit(cin if i == 0 else cout, cout, 2 if s and not i else 1, rngs=rngs) for i in range(n)]))
            cin = cout
        self.stages = nnx.List(stages)
        self.fc = nnx.Linear(widths[-1], num_classes, rngs=rngs)
        self.droppable = tuple(f"stage{s + 1}.{i}" for s in range(len(widths)) for i in range(1, n))  # not a stage's first
        self.input_spec = pj.InputSpec(32, MEAN, STD)

    def stem(self, x):
        return nnx.relu(self.stem_norm(self.stem_conv(x)))

    def residual_blocks(self):
        return [(f"stage{s + 1}.{i}", unit) for s, stage in enumerate(self.stages) for i, unit in enumerate(stage)]

    def classify(self, pooled):
        return self.fc(pooled)


# Your PyTorch layout -> this model's parameter names (see `practise-jax inspect` for both sides).
RENAME = [r"^stem\.0\.=stem_conv.", r"^stem\.1\.=stem_norm.", r"\.bn_([ab])\.=.norm_\1.", r"^classifier\.=fc."]


def stand_in_checkpoint(akamaster: Path, out: Path) -> Path:
    """The trained akamaster ResNet-20 as a state dict of this model's PyTorch layout (a stand-in for yours).

    The end-padded shortcut puts a stage's input channels first where option A
    centres them, so each stage's stream is a permutation of the original's:
    convs writing the stream permute their outputs, convs reading it their inputs.
    """
    source = {k.removeprefix("module."): v for k, v in model_zoo.read_state_dict(akamaster).items()}
    order, widths, out_dict = np.arange(16), (16, 32, 64), {}
    for s, width in enumerate(widths):
        previous = order
        if s:  # the new stream: the old one shifted by the padding, then the zero channels in order
            pad = (width - widths[s - 1]) // 2
            order = np.concatenate([previous + pad, np.setdiff1d(np.arange(width), previous + pad)])
        for i in range(3):
            old, new = f"layer{s + 1}.{i}", f"stages.{s}.{i}"
            reads = previous if i == 0 else order
            out_dict[f"{new}.conv_a.weight"] = source[f"{old}.conv1.weight"][:, reads]
            out_dict[f"{new}.conv_b.weight"] = source[f"{old}.conv2.weight"][order]
            for part in ("weight", "bias", "running_mean", "running_var"):
                out_dict[f"{new}.bn_a.{part}"] = source[f"{old}.bn1.{part}"]
                out_dict[f"{new}.bn_b.{part}"] = source[f"{old}.bn2.{part}"][order]
    out_dict.update({"stem.0.weight": source["conv1.weight"], "classifier.weight": source["linear.weight"][:, order],
                     "classifier.bias": source["linear.bias"]})
    out_dict.update({f"stem.1.{p}": source[f"bn1.{p}"] for p in ("weight", "bias", "running_mean", "running_var")})
    np.savez(out, **out_dict)
    return out


# --------------------------------------------------------------------------- the method, from the script

def main(argv=None) -> dict:
    xla_cpu.use_fast_flags()
    jit_cache.use_persistent_cache()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("PRACTISE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--shots", type=int, default=500)
    parser.add_argument("--adaptor-steps", type=int, default=defaults.adaptor_steps())
    parser.add_argument("--finetune-steps", type=int, default=300)
    choose = parser.add_mutually_exclusive_group()
    choose.add_argument("--speedup", type=float, default=0.2, help="latency target, from the profile (default 0.2)")
    choose.add_argument("--drop", type=int, help="drop this many best-scoring blocks instead of meeting a target")
    parser.add_argument("--latency-repeats", type=int, help="rounds of timed calls (default: a time budget)")
    parser.add_argument("--out", default=tempfile.mkdtemp(prefix="custom_resnet_"))
    args = parser.parse_args(argv)
    out, shared = Path(args.out), Path(args.data_dir)
    real = (shared / "cifar10_resnets" / "resnet20-12fca82f.th").is_file()

    build = lambda: MyResNet(rngs=nnx.Rngs(0))  # noqa: E731
    if real:
        weights = stand_in_checkpoint(shared / "cifar10_resnets" / "resnet20-12fca82f.th", out / "my_resnet20.npz")
        teacher = model_zoo.load_weights(nnx.eval_shape(build), weights, rename=RENAME)
        train = data.load_tiny_set(f"npz:{shared / 'cifar10' / 'cifar10_train_exact.npz'}", args.shots, 2021, num_classes=10)[0]
        test = data.load_source(f"npz:{shared / 'cifar10' / 'cifar10_test_exact.npz'}").take(slice(0, 1017))
    else:
        teacher = build()
        train, test = data.synthetic(args.shots, 32, seed=1), data.synthetic(256, 32, seed=2)
    teacher.eval()
    before = pj.evaluate(teacher, test.images, test.labels)
    print(f"teacher: top-1 {before.top1:.2f}% on {before.count} test images ({'converted checkpoint' if real else 'random weights'})")

    timing = dict(repeats=args.latency_repeats, cache=latency.Cache())
    tau = pj.profile(teacher, (64, 32, 32, 3), **timing)
    scores = pj.score(teacher, train.images, tau=tau, steps=args.adaptor_steps, seed=2021, progress=True)
    print(scores)
    blocks = pj.select(scores, k=args.drop) if args.drop is not None else pj.select(scores, speedup=args.speedup)
    student, _ = pj.finetune(pj.drop(teacher, blocks), train.images, teacher=teacher, steps=args.finetune_steps,
                             seed=2021, progress=True)
    after = pj.evaluate(student, test.images, test.labels)
    measured = pj.profile(teacher, (64, 32, 32, 3), [blocks], **timing).tau(blocks)
    print(f"dropped {', '.join(blocks)}: top-1 {before.top1:.2f}% -> {after.top1:.2f}%, latency -{100 * measured:.1f}% "
          f"(batch 64, {tau.setting.device})")

    pj.save_compressed(out / "student", student)
    reloaded, _ = pj.load_compressed(out / "student", model=build)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
    assert np.allclose(reloaded(x)[0], student(x)[0], atol=1e-5), "the checkpoint must rebuild the same student"
    print(f"checkpoint: {out / 'student'} (reloads into MyResNet)")
    return {"teacher_top1": before.top1, "student_top1": after.top1, "dropped": blocks, "tau": measured, "real": real}


if __name__ == "__main__":
    main()
