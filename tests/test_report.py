"""The report's statistics on made-up scores (no sweep needed)."""

from __future__ import annotations

import pytest

from mera.report import cells, comparison_table, missing_cells, paired, seed_stability, table


def test_a_difference_every_seed_agrees_on_keeps_its_sign_in_every_resample():
    assert seed_stability([1.0, 2.0, 0.5], [13, 21, 42], 7 / 6) == 1.0
    assert seed_stability([-1.0, -2.0, -0.5], [13, 21, 42], -7 / 6) == 1.0


def test_a_difference_carried_by_one_seed_flips_when_that_seed_is_not_drawn():
    # seed 13: +3, seeds 21 and 42: -1 each; the mean is positive iff seed 13 is drawn at least
    # once in three draws: 1 - (2/3)^3 = 19/27 of the resamples
    share = seed_stability([3.0, -1.0, -1.0], [13, 21, 42], 1 / 3)
    assert share == pytest.approx(19 / 27, abs=0.04)
    assert seed_stability([3.0, -1.0, -1.0], [13, 21, 42], 1 / 3) == share  # fixed RNG: the same every time


def test_pairs_are_resampled_by_seed_not_one_by_one():
    # two targets per seed: the pairs of one seed go in and out together
    scores = {"a": {("t1", 8, 1): 0.9, ("t2", 8, 1): 0.9, ("t1", 8, 2): 0.4, ("t2", 8, 2): 0.4},
              "b": {("t1", 8, 1): 0.5, ("t2", 8, 1): 0.5, ("t1", 8, 2): 0.5, ("t2", 8, 2): 0.5}}
    row = paired(scores, "a", "b")
    assert row["mean_delta"] == pytest.approx(15.0)
    assert row["same_sign"] == pytest.approx(0.75, abs=0.04)  # negative only when seed 2 is drawn twice
    assert "| a | b | 4 | +15.00 | " in comparison_table([row]) and " % |" in comparison_table([row])


def test_cells_of_unfinished_fine_tunes_are_marked_missing():
    done = [{"target": "rte", "init": "adapter", "group": None, "shots": 8, "seed": 13, "metrics": {"accuracy": 0.5}}]
    todo = [{"target": "rte", "init": "adapter", "group": None, "shots": 8, "seed": 21},
            {"target": "rte", "init": "mera-wts", "group": "all", "shots": 8, "seed": 13}]
    text = table(cells(done), [8], missing=missing_cells(todo))
    assert "| rte | adapter | **50.0 ± 0.0 (N=1)**; 1 missing |" in text
    assert "| rte | mera-wts [all] | missing ×1 |" in text


def test_equal_count_differences_tie_and_p_is_scipys_tie_corrected_one():
    import numpy as np
    from scipy.stats import wilcoxon

    rng = np.random.default_rng(1)
    n = 200  # evaluation rows: accuracies are counts / n
    a = rng.integers(100, 180, 45)
    b = a + rng.integers(-3, 4, 45)  # many equal differences
    row = paired({"a": {("t", 8, i): x / n for i, x in enumerate(a)},
                  "b": {("t", 8, i): x / n for i, x in enumerate(b)}}, "a", "b")
    assert row["ties"] == int(np.sum(a == b))
    assert row["p"] == pytest.approx(wilcoxon(a - b, zero_method="wilcox").pvalue, rel=1e-12)
