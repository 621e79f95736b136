"""Paired statistics behind the report's questions (METHOD.md 8): (a) OT merges vs naive
merges, (b) same-track vs cross-track, (c) MerA vs the baselines; paired over (target, K,
seed), two-sided Wilcoxon, and a bootstrap over seeds of how stable the sign is."""

from __future__ import annotations

import statistics
from collections import defaultdict

from mera.inits import INITS
from mera.report.tables import init_label

MERA = ("mera-wts", "mera-acts")  # the OT merges the questions are asked about
NAIVE = ("mera-avg", "mera-sum")
BASELINES = [k for k in INITS.values() if k.baseline]


def by_pair(results: list[dict], metric: str = "accuracy") -> dict[str, dict[tuple, float]]:
    """init label -> (target, K, seed) -> score."""
    out: dict = defaultdict(dict)
    for r in results:
        out[init_label(r)][(r["target"], r["shots"], r["seed"])] = r["metrics"][metric]
    return out


def paired(scores: dict[str, dict[tuple, float]], a: str, b: str) -> dict | None:
    """a vs b over the (target, K, seed) both have: mean Δ (points), wins/ties/losses and the
    two-sided Wilcoxon signed-rank p-value (None when every difference is 0 or n < 2)."""
    common = sorted(set(scores.get(a, {})) & set(scores.get(b, {})))
    if not common:
        return None
    # rounded: accuracies are counts over the same rows, and equal count differences must tie
    # (as floats, 0.7 - 0.6 and 0.3 - 0.2 differ in the last bit, and Wilcoxon's ranks broke the tie)
    deltas = [round(100 * (scores[a][key] - scores[b][key]), 9) for key in common]
    p = None
    if len(deltas) >= 2 and any(d != 0 for d in deltas):
        from scipy.stats import wilcoxon

        p = float(wilcoxon(deltas, zero_method="wilcox", alternative="two-sided").pvalue)
    mean = statistics.fmean(deltas)
    return {"a": a, "b": b, "n": len(deltas), "mean_delta": mean,
            "wins": sum(d > 0 for d in deltas), "ties": sum(d == 0 for d in deltas),
            "losses": sum(d < 0 for d in deltas), "p": p,
            "same_sign": seed_stability(deltas, [key[-1] for key in common], mean)}


BOOTSTRAP = 2000  # resamples of seeds behind `same_sign`


def seed_stability(deltas: list[float], seeds: list, mean: float) -> float:
    """The share of bootstrap resamples of the seeds (drawn with replacement, every pair of a
    drawn seed kept) whose mean difference has the sign of `mean`: how much the finding hangs
    on which seeds were run. Fixed RNG, so the report is the same run to run."""
    import numpy as np

    names = sorted(set(seeds))
    index = np.array([names.index(s) for s in seeds])
    sums = np.bincount(index, weights=np.asarray(deltas, dtype=float), minlength=len(names))
    counts = np.bincount(index, minlength=len(names))
    draws = np.random.default_rng(0).multinomial(len(names), [1 / len(names)] * len(names), size=BOOTSTRAP)
    means = (draws @ sums) / (draws @ counts)
    return float(np.mean(np.sign(np.round(means, 9)) == np.sign(round(mean, 9))))


def comparisons(results: list[dict]) -> dict[str, list[dict]]:
    """The paired tests behind questions (a), (b) and (c), for whatever the sweep ran."""
    scores = by_pair(results)
    labels = set(scores)
    groups = sorted({r["group"] for r in results if r.get("group")})
    out: dict[str, list[dict]] = {"ot_vs_naive": [], "same_vs_cross": [], "mera_vs_baselines": []}

    def add(section: str, a: str, b: str) -> None:
        if a in labels and b in labels and (c := paired(scores, a, b)):
            out[section].append(c)

    for g in groups:
        for m in MERA:
            for naive in NAIVE:
                add("ot_vs_naive", f"{m} [{g}]", f"{naive} [{g}]")
    for init in sorted({r["init"] for r in results if r.get("group")}):
        add("same_vs_cross", f"{init} [same-track]", f"{init} [cross-track]")
    for g in groups:
        for m in MERA:
            for base in BASELINES:
                add("mera_vs_baselines", f"{m} [{g}]", f"{base.name} [{g}]" if base.grouped else base.name)
    return out


def _fmt_p(p: float | None) -> str:
    return "n/a" if p is None else (f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}")


def comparison_table(rows: list[dict]) -> str:
    if not rows:
        return "_not in this sweep_"
    lines = ["| A | B | pairs | mean Δ (A−B, pts) | same sign over seed resamples | wins / ties / losses "
             "| Wilcoxon p |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {c['a']} | {c['b']} | {c['n']} | {c['mean_delta']:+.2f} | {100 * c['same_sign']:.0f} % "
              f"| {c['wins']} / {c['ties']} / {c['losses']} | {_fmt_p(c['p'])} |" for c in rows]
    return "\n".join(lines)
