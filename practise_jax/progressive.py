"""Progressive PRACTISE: drop in rounds, recovering and re-scoring the rest on the student in between.

One-shot PRACTISE scores every block on the teacher and drops the cheapest
cover of the target at once; at large cuts the blocks left interact, and a
block that is cheap to lose from the teacher may not be from a student that
already lacks its neighbours. Here the target is split over ``rounds``: each
round drops the least-score cover of its share (`selection.for_speedup`) from
the current scores, gives the student a short mimic finetune against the
teacher, and scores the remaining candidates on that student (R of the
student's own features: what it can still give up). The blocks found are the
selection; the final finetune starts from the plain student, as one-shot
PRACTISE's does, so the two compare as criteria. Extra cost over one-shot:
``rounds - 1`` scorings of the remaining candidates and ``rounds - 1`` short
finetunes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
from flax import nnx

from practise_jax import protocol, selection, surgery
from practise_jax.transforms import Views


def progressive_selection(teacher: nnx.Module, images: np.ndarray, views: Views, tau: Mapping[str, float],
                          first: selection.Scores, *, speedup: float, rounds: int, finetune_steps: int,
                          score_steps: int, batch_size: int, seed: int,
                          log: Callable[[str], None] = print) -> tuple[list[str], list[dict], list[str]]:
    """The blocks to drop, each round's record, and the last ranking of the blocks left (best first)."""
    from practise_jax import api  # the API builds on the modules this one sits beside

    selection.check_target(speedup)
    chosen, history, scores = [], [], first
    for round_ in range(1, rounds + 1):
        saved = sum(tau[b] for b in chosen)
        share = speedup - saved if round_ == rounds else min(speedup - saved, speedup / rounds)
        taken = selection.for_speedup(scores, share)
        chosen += taken
        history.append({"round": round_, "dropped": taken, "ranking": list(scores.blocks)})
        log(f"round {round_}: dropping {', '.join(taken)} (predicted cut {100 * sum(tau[b] for b in chosen):.1f}%)")
        if round_ == rounds or sum(tau[b] for b in chosen) >= speedup:
            break
        student = surgery.drop(teacher, chosen)
        student, _ = api.finetune(student, images, teacher=teacher, steps=finetune_steps, batch_size=batch_size,
                                  seed=seed + round_, views=views)
        remaining = protocol.candidates(student)
        scores = api.score(student, images, tau={b: tau[b] for b in remaining}, steps=score_steps,
                           batch_size=batch_size, seed=seed + round_, views=views)
    return chosen, history, [b for b in scores.blocks if b not in chosen]
