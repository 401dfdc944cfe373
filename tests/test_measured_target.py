"""A latency target met as measured: sets are adjusted until their measured cut is within tolerance."""

import json

import pytest

import practise_jax as pj
from practise_jax import pipeline, protocol, selection
from test_pipeline import tiny_config

TAU = {f"b{i}": 0.05 for i in range(1, 9)}  # eight blocks of 5% each
RANKING = [f"b{i}" for i in (3, 1, 4, 6, 2, 8, 5, 7)]  # the criterion's order, best first


def superadditive(blocks):
    """Sets measure more than their summed taus, as many-block sets do on a CPU: 5% per block, +25% on top."""
    return 1.25 * sum(TAU[b] for b in blocks)


def test_a_set_that_measures_too_much_loses_its_worst_ranked_blocks():
    chosen = selection.in_order(RANKING, TAU, 0.30)  # the sum predicts 30% with 6 blocks; they measure 37.5%
    fitted = selection.fit_measured(chosen, RANKING, TAU, superadditive, 0.30, tolerance=0.015)
    assert fitted.blocks == RANKING[:5]  # the worst-ranked chosen block went; 5 blocks measure 31.25%
    assert fitted.measured == pytest.approx(0.3125) and [len(blocks) for blocks, _ in fitted.trail] == [6, 5]
    strict = selection.fit_measured(chosen, RANKING, TAU, superadditive, 0.30, tolerance=0.01)
    assert strict.blocks == RANKING[:5]  # 1.25 points off, but removing another 5% block would be 5 points off


def test_a_set_that_measures_too_little_gains_the_next_best_block():
    subadditive = lambda blocks: 0.8 * sum(TAU[b] for b in blocks)  # noqa: E731
    fitted = selection.fit_measured(RANKING[:4], RANKING, TAU, subadditive, 0.20, tolerance=0.01)
    assert fitted.blocks == RANKING[:5] and fitted.measured == pytest.approx(0.20)


def test_no_cycles_and_the_closest_set_when_the_target_cannot_be_hit():
    lumpy = {**TAU, "b3": 0.30}  # the best block alone is 30%: 20% +- 1 is out of reach
    measured = []
    fitted = selection.fit_measured(["b3"], RANKING, lumpy, lambda b: measured.append(b) or sum(lumpy[x] for x in b),
                                    0.20, tolerance=0.01, max_measurements=6)
    assert fitted.blocks == ["b3"] and len(measured) == 1  # nothing removable (single block), nothing to add above target
    fitted = selection.fit_measured(["b1"], RANKING, TAU, lambda b: 0.031 * len(b), 0.20, tolerance=0.001,
                                    max_measurements=12)
    assert len(set(fitted.trail)) == len(fitted.trail)  # never the same set twice
    assert fitted.measured == min((cut for _, cut in fitted.trail), key=lambda cut: abs(cut - 0.20))


def test_a_profile_that_measured_no_saving_is_called_noise_and_the_count_named():
    noise = pj.Scores.rank({"b1": 1.0, "b2": 2.0}, {"b1": -0.38, "b2": 0.0})  # one busy round of timings
    with pytest.raises(pj.UserError, match=r"measured no saving.*noise.*more repeats.*--drop K"):
        pj.select(noise, speedup=0.2)
    assert pj.select(noise, k=1) == ["b1"]
    with pytest.raises(pj.UserError, match=r"saves about 5\.0%"):
        pj.select(pj.Scores.rank({"b1": 1.0}, {"b1": 0.05}), speedup=0.2)


def test_compress_meets_a_speedup_as_measured_and_says_how(tmp_path, monkeypatch):
    from practise_jax.pipeline import phases

    # single-block taus fixed (a tiny model's are noise); the chosen sets are measured for real
    monkeypatch.setitem(phases.RUNNERS, "latency", lambda ctx: {"tau": {b: 0.1 for b in protocol.candidates(ctx.inputs.teacher)}})
    config = tiny_config(tmp_path, drop=None, speedup=0.25, method="first-k", target_tolerance=0.05)
    summary = pipeline.compress(config, tmp_path / "run", progress=False, log=lambda m: None)
    selected = json.loads((tmp_path / "run" / "phases" / "selection.json").read_text())
    assert selected["trail"] and selected["blocks"] == summary["dropped_blocks"]
    assert selected["measured"] == pytest.approx(summary["latency_reduction"])  # the final measurement is that set's
    with pytest.raises(pj.UserError, match="target tolerance"):
        tiny_config(tmp_path, drop=None, speedup=0.25, target_tolerance=2.0).check()
    assert not tiny_config(tmp_path, drop=None, speedup=0.25, target_tolerance=None).fits_measured_target
    assert not tiny_config(tmp_path, drop=None, speedup=0.25, tau_from="elsewhere.csv").fits_measured_target
