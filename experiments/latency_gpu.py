"""The latency profiles of experiments/README.md on a GPU, for comparing devices.

**Status: written and checked on CPU only** (``--allow-cpu``, a tiny config);
no GPU was available when it was written, so no GPU figures exist yet.

It runs `practise_jax.latency.profile` (the code behind ``practise-jax
profile``) for a list of model/batch configurations and dtypes on the first
GPU JAX sees, plus the additivity sets of experiments/latency_additivity.py,
and writes one tidy CSV per configuration. Every row carries the device kind,
JAX version, dtype, batch size, image size and clock, so the files
concatenate with the CPU ones under experiments/results/ for comparison.

    pip install -e .[cuda12]          # JAX with CUDA 12
    python experiments/latency_gpu.py                       # every config, float32 and bfloat16
    python experiments/latency_gpu.py --configs resnet34:64:224 --dtypes float32
    python experiments/latency_gpu.py --allow-cpu --configs cifar_resnet20:8 --repeats 2 --out-dir /tmp/x   # smoke test

On a GPU the default time budget (60 s of timed calls per profile) gives
hundreds of interleaved rounds (capped at 500, the reference's call count);
the reference figure is ResNet-34 at batch 64, 224 px, float32 (about 41.7 ms
on a TITAN Xp). Without a GPU the script stops with a message, unless
``--allow-cpu`` is given.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import jax
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import latency_additivity  # noqa: E402

import model_zoo  # noqa: E402
from practise_jax import defaults, latency  # noqa: E402
from practise_jax.errors import UserError  # noqa: E402
from practise_jax.latency.profile import describe_device  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

# model:batch[:image size]; the first two are the CPU profiles of experiments/README.md, the third the reference setting
CONFIGS = ("cifar_resnet56:64", "resnet34:8:224", "resnet34:64:224", "resnet50:64:224", "mobilenet_v2:64:224")


def parse_config(text: str) -> tuple[str, int, int | None]:
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise SystemExit(f"config '{text}' is not model:batch[:image_size]")
    return parts[0], int(parts[1]), int(parts[2]) if len(parts) == 3 else None


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def find_accelerator(allow_cpu: bool) -> jax.Device:
    for platform in ("gpu", "tpu"):
        try:
            return jax.devices(platform)[0]
        except RuntimeError:
            continue
    if allow_cpu:
        return jax.devices("cpu")[0]
    raise SystemExit(
        "no GPU or TPU is visible to JAX (devices: "
        + ", ".join(str(d) for d in jax.devices())
        + "). Install JAX with CUDA (pip install -e .[cuda12]), or pass --allow-cpu to run on the CPU anyway."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), help="model:batch[:image_size] ...")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=sorted(latency.DTYPES))
    parser.add_argument("--repeats", type=int, help="rounds (default: fit --time-budget)")
    parser.add_argument("--time-budget", type=float, default=defaults.LATENCY_BUDGET_S)
    parser.add_argument("--no-additivity", action="store_true", help="skip the drop-set additivity runs")
    parser.add_argument("--no-cache", action="store_true")
    parser.add_argument("--allow-cpu", action="store_true", help="run on the CPU when no accelerator is present")
    parser.add_argument("--out-dir", default=str(RESULTS))
    args = parser.parse_args(argv)

    device = find_accelerator(args.allow_cpu)
    device_slug = "cpu" if device.platform == "cpu" else slug(device.device_kind)
    out_dir = Path(args.out_dir)
    print(f"device: {describe_device(device)} ({device.platform}), jax {jax.__version__}")
    log = lambda message: print(f"[latency_gpu] {message}", file=sys.stderr, flush=True)  # noqa: E731
    options = dict(repeats=args.repeats, time_budget_s=args.time_budget, device=device,
                   cache=latency.Cache(), reuse=not args.no_cache, log=log)
    try:
        for config in args.configs:
            model, batch, image = parse_config(config)
            for dtype in args.dtypes:
                size = image or model_zoo.get_info(model).input_size
                abstract = nnx.eval_shape(lambda: model_zoo.create(model))
                result = latency.profile(abstract, (batch, size, size, 3), dtype=dtype, **options)
                print(latency.format_table(result), "\n")
                latency.write_csv(latency.rows(result), out_dir / f"latency_{device_slug}_{model}_b{batch}_{size}px_{dtype}.csv")
                if not args.no_additivity and model in latency_additivity.SETS:
                    _, rows = latency_additivity.run(model, latency_additivity.sets_for(model, None), batch_size=batch,
                                                     image_size=image, dtype=dtype, **options)
                    print(latency_additivity.format_rows(rows), "\n")
                    latency.write_csv(rows, out_dir / f"latency_additivity_{device_slug}_{model}_b{batch}_{size}px_{dtype}.csv")
    except UserError as error:
        print(f"latency_gpu: error: {error}", file=sys.stderr)
        return 2
    print(f"CSV files in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
