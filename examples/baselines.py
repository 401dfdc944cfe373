"""The paper's comparison on one model from a script: PRACTISE's choice against the first blocks, mimic against CE."""
import os
import sys
from pathlib import Path

import model_zoo
import practise_jax as pj
from practise_jax import data

steps, budget = (2, 0.5) if "--quick" in sys.argv else (50, 24.0)  # --quick: the same calls in seconds
shared = Path(os.environ.get("PRACTISE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
if (shared / "cifar10_resnets").is_dir():
    teacher = model_zoo.load("cifar_resnet20", shared / "cifar10_resnets" / "resnet20-12fca82f.th")
    train = data.load_tiny_set(f"npz:{shared}/cifar10/cifar10_train_exact.npz", 100, seed=2021, num_classes=10)[0]
    test = data.load_source(f"npz:{shared}/cifar10/cifar10_test_exact.npz").take(slice(0, 1017))
else:
    teacher, train, test = model_zoo.create("cifar_resnet20"), data.synthetic(100, 32), data.synthetic(200, 32, seed=1)

scores = pj.score(teacher, train.images, tau=pj.profile(teacher, (64, 32, 32, 3), time_budget_s=budget), steps=steps)
choices = {"practise": pj.select(scores, k=2), "first-k": list(teacher.droppable[:2])}
for name, blocks in choices.items():
    for loss in ("mimic", "ce"):  # ce is the paper's BP baseline (labels, lr 1e-4)
        student, _ = pj.finetune(pj.drop(teacher, blocks), train.images, teacher=teacher, labels=train.labels,
                                 loss=loss, steps=6 * steps)
        print(f"{name:8s} {loss:5s} {','.join(blocks):18s} top-1 {pj.evaluate(student, test.images, test.labels).top1:.2f}%")
