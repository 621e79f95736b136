"""Result tables: fine-tune results grouped into cells (target x init x K), and the Markdown
tables of them, with failed and missing fine-tunes marked."""

from __future__ import annotations

import statistics
from collections import defaultdict


def init_label(result: dict) -> str:
    return result["init"] + (f" [{result['group']}]" if result.get("group") else "")


def cells(results: list[dict], metric: str = "accuracy") -> dict:
    """target -> init label -> K -> {mean, std, n, values, single_source}."""
    grouped: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    single: set = set()
    for r in results:
        grouped[r["target"]][init_label(r)][r["shots"]].append(r["metrics"][metric])
        if r.get("single_source"):
            single.add((r["target"], init_label(r)))
    out: dict = {}
    for target, inits in sorted(grouped.items()):
        for label, by_k in sorted(inits.items()):
            for k, vals in sorted(by_k.items()):
                out.setdefault(target, {}).setdefault(label, {})[str(k)] = {
                    "mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                    "n": len(vals), "values": vals, "single_source": (target, label) in single}
    return out


def failed_cells(failures: list[dict]) -> dict:
    """(target, init label, K) -> the errors of its failed fine-tunes."""
    out: dict = defaultdict(list)
    for f in failures:
        out[(f["target"], init_label(f), f["shots"])].append(f["error"])
    return out


def missing_cells(todo: list[dict]) -> dict:
    """(target, init label, K) -> how many of its fine-tunes have not finished."""
    out: dict = defaultdict(int)
    for u in todo:
        out[(u["target"], init_label(u), u["shots"])] += 1
    return out


def mean_by_init(table_cells: dict) -> dict:
    """'<init label> K=<k>' -> mean over the targets of their cells' means (metrics.json, MLflow)."""
    pooled: dict = defaultdict(list)
    for inits in table_cells.values():
        for label, by_k in inits.items():
            for k, c in by_k.items():
                pooled[f"{label} K={k}"].append(c["mean"])
    return {k: statistics.fmean(v) for k, v in sorted(pooled.items())}


def table(table_cells: dict, shots: list[int], failed: dict | None = None, missing: dict | None = None) -> str:
    """target x init rows, one column per K; the best mean of each target and K in bold; a
    cell with failed or not yet finished fine-tunes says so (the first error of failed ones)."""
    failed, missing = failed or {}, missing or {}
    rows = {t: dict(inits) for t, inits in table_cells.items()}
    for target, label, _ in [*failed, *missing]:
        rows.setdefault(target, {}).setdefault(label, {})
    head = "| target | init | " + " | ".join(f"K={k}" for k in shots) + " |"
    lines = [head, "|" + "---|" * (2 + len(shots))]
    for target in sorted(rows):
        inits = rows[target]
        best = {k: max((c[str(k)]["mean"] for c in inits.values() if str(k) in c), default=None) for k in shots}
        for label in sorted(inits):
            by_k = inits[label]
            row = []
            for k in shots:
                c, errors = by_k.get(str(k)), failed.get((target, label, k), [])
                text = "-" if c is None else f"{100 * c['mean']:.1f} ± {100 * c['std']:.1f} (N={c['n']})"
                if c is not None and c["mean"] == best[k]:
                    text = f"**{text}**"
                if errors:
                    why = errors[0][:80].replace("|", "/")
                    text = (f"failed ×{len(errors)}: {why}" if c is None else f"{text}; {len(errors)} failed: {why}")
                elif n := missing.get((target, label, k)):
                    text = f"missing ×{n}" if c is None else f"{text}; {n} missing"
                row.append(text)
            mark = " †" if any(c["single_source"] for c in by_k.values()) else ""
            lines.append(f"| {target} | {label}{mark} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def group_deltas(table_cells: dict, shots: list[int]) -> str:
    """Per target and grouped init: mean(same-track) − mean(cross-track), per K."""
    lines = ["| target | init | " + " | ".join(f"K={k}" for k in shots) + " |", "|" + "---|" * (2 + len(shots))]
    for target, inits in table_cells.items():
        for label in sorted(inits):
            if not label.endswith("[same-track]"):
                continue
            cross = inits.get(label.replace("[same-track]", "[cross-track]"))
            if cross is None:
                continue
            same = inits[label]
            row = [f"{100 * (same[str(k)]['mean'] - cross[str(k)]['mean']):+.1f}"
                   if str(k) in same and str(k) in cross else "-" for k in shots]
            lines.append(f"| {target} | {label.removesuffix(' [same-track]')} | " + " | ".join(row) + " |")
    return "\n".join(lines) if len(lines) > 2 else "_no target has both a same-track and a cross-track group here_"
