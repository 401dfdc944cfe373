"""The method on a zoo model from a script: profile, score, select, drop, finetune, evaluate (the README's example)."""
import os
import sys
from pathlib import Path

import model_zoo
import practise_jax as pj
from practise_jax import data

steps, budget = (2, 0.5) if "--quick" in sys.argv else (50, 24.0)  # --quick: the same calls in seconds
shared = Path(os.environ.get("PRACTISE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))  # real data
if (shared / "cifar10_resnets").is_dir():
    teacher = model_zoo.load("cifar_resnet20", shared / "cifar10_resnets" / "resnet20-12fca82f.th")
    train = data.load_tiny_set(f"npz:{shared}/cifar10/cifar10_train_exact.npz", 500, seed=2021, num_classes=10)[0]
    test = data.load_source(f"npz:{shared}/cifar10/cifar10_test_exact.npz").take(slice(0, 1017))
else:  # random weights on a generated task: the same calls, meaningless accuracies
    teacher, train, test = model_zoo.create("cifar_resnet20"), data.synthetic(500, 32), data.synthetic(200, 32, seed=1)

tau = pj.profile(teacher, (64, 32, 32, 3), time_budget_s=budget)  # latency saved by dropping each candidate alone
scores = pj.score(teacher, train.images, tau=tau, steps=steps)     # R, tau and R / tau of every candidate, ranked
print(scores)
blocks = pj.select(scores, speedup=0.2)                             # the cheapest set that saves about 20%
student = pj.drop(teacher, blocks)                                  # the teacher without them, weights shared
student, _ = pj.finetune(student, train.images, teacher=teacher, steps=6 * steps)  # mimic the teacher's features
cut = pj.profile(teacher, (64, 32, 32, 3), [blocks], time_budget_s=budget).tau(blocks)
print(f"dropped {blocks}: top-1 {pj.evaluate(teacher, test.images, test.labels).top1:.2f}% -> "
      f"{pj.evaluate(student, test.images, test.labels).top1:.2f}%, latency -{100 * cut:.1f}%")
