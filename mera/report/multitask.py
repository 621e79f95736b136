"""The report's multi-task merging section (merge-eval, no fine-tuning): per adapter kind x
merge method x N, accuracy in-distribution (the group's tasks, own heads) and held-out (the
other tasks, K-shot heads), absolute and normalised by each task's own unmerged adapter;
curves of normalised accuracy vs N; the same numbers for results/metrics.json."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

from mera.config import SweepConfig

SPLITS = {"in": "in-distribution", "held": "held-out"}


def collect(evals: list[dict]) -> dict:
    """kind -> method -> N -> {"in_normalised": [...], ...}: one value per draw (the mean over
    that group's tasks), so a cell's spread is over draws."""
    out: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(lambda: defaultdict(list))))
    for e in evals:
        if e.get("failed") or "summary" not in e:
            continue
        for key, value in e["summary"].items():
            if not key.endswith("_n"):
                out[e["kind"]][e["method"]][int(e["n"])][key].append(value)
    return out


def _cell(values: list[float] | None, bold: bool = False) -> str:
    if not values:
        return "—"
    text = f"{100 * statistics.fmean(values):.1f}"
    if len(values) > 1:
        text += f" ± {100 * statistics.stdev(values):.1f}"
    return f"**{text}**" if bold else text


def table(cfg: SweepConfig, data: dict, metric: str, skipped: dict, failed: dict) -> str:
    """Rows kind / method, columns N; the best mean of each kind and N in bold."""
    sizes = cfg.multitask.sizes
    lines = ["| kind | method | " + " | ".join(f"N={n}" for n in sizes) + " |", "|---|---|" + "---|" * len(sizes)]
    for kind in cfg.multitask.kinds:
        best = {n: max((statistics.fmean(v) for by_n in data.get(kind, {}).values()
                        if (v := by_n.get(n, {}).get(metric))), default=None) for n in sizes}
        for method in cfg.multitask.methods:
            if (kind, method) in skipped:
                lines.append(f"| {kind} | {method} | " + " | ".join(["n/a"] * len(sizes)) + " |")
                continue
            row = []
            for n in sizes:
                values = data.get(kind, {}).get(method, {}).get(n, {}).get(metric)
                if (kind, method, n) in failed:
                    row.append("failed")
                elif not values and metric.startswith("held") and n == len(cfg.pretrain.tasks):
                    row.append("— (none held out)")
                else:
                    row.append(_cell(values, bool(values) and statistics.fmean(values) == best[n]))
            lines.append(f"| {kind} | {method} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def own_adapters(evals: list[dict]) -> dict[str, float]:
    """kind -> mean accuracy of the pool's own unmerged adapters (the normaliser)."""
    own: dict = defaultdict(dict)
    for e in evals:
        for r in e.get("rows", []):
            own[e["kind"]][r["task"]] = r["own_accuracy"]
    return {k: statistics.fmean(v.values()) for k, v in own.items() if v}


def plot(cfg: SweepConfig, data: dict, metric: str, path: Path) -> bool:
    """Normalised accuracy vs N: one panel per kind, one line per method (±std over draws)."""
    from mera.plots import pyplot, save

    kinds = [k for k in cfg.multitask.kinds if k in data]
    if not kinds:
        return False
    plt = pyplot()
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.4 * len(kinds), 3.6), squeeze=False, sharey=True)
    for ax, kind in zip(axes.flat, kinds):
        for method, by_n in data[kind].items():
            ns = [n for n in sorted(by_n) if by_n[n][metric]]
            if not ns:
                continue
            means = [100 * statistics.fmean(by_n[n][metric]) for n in ns]
            stds = [100 * statistics.stdev(by_n[n][metric]) if len(by_n[n][metric]) > 1 else 0 for n in ns]
            color = f"C{cfg.multitask.methods.index(method) % 10}"  # one colour per method in every panel
            ax.errorbar(ns, means, yerr=stds, marker="o", capsize=3, label=method, color=color)
        ax.axhline(100, color="grey", lw=0.8, ls="--")
        ax.set(title=kind, xlabel="N (tasks merged)", ylabel=f"{SPLITS[metric.split('_')[0]]} accuracy (% of own)")
    for ax in axes.flat:
        ax.legend(fontsize=7, loc="best")
    save(fig, path)
    return True


def section(cfg: SweepConfig, evals: list[dict], out_dir: Path) -> tuple[list[str], dict]:
    """Markdown lines and the metrics.json entry of the multitask study; `evals` are its
    results and failures (the n/a cells follow from the config)."""
    mt = cfg.multitask
    data = collect(evals)
    from mera.plan import not_applicable_pairs

    skipped = not_applicable_pairs(cfg)
    failed = {(e["kind"], e["method"], int(e["n"])): e["failed"] for e in evals if e.get("failed")}
    own = own_adapters(evals)
    body = ["## Multi-task merging without fine-tuning (merge-eval)", "",
            f"- pool: the {len(cfg.pretrain.tasks)} tasks of pretrain.tasks; groups of N = {mt.sizes} tasks, "
            f"{mt.draws} seeded draw(s) per N (nested: a draw's larger groups hold its smaller ones)",
            f"- adapter kinds {mt.kinds}, pretrained with lr {dict(mt.lr_by_kind) or 'pretrain.lr'} "
            f"(else {cfg.pretrain.lr:g}); merge methods {mt.methods}",
            "- in-distribution: each task of the group with its own head (saved with its adapter); held-out: each "
            f"other task with a head trained on the frozen merged model's features from {mt.heldout_shots} examples "
            f"per class ({mt.head_steps} steps, lr {mt.head_lr:g}, seeds {mt.heldout_seeds})",
            "- normalised = merged accuracy / the task's own unmerged adapter's accuracy on the same validation rows; "
            "a cell = mean over the group's tasks (± std over draws)",
            "- own unmerged adapters, mean accuracy over the pool: "
            + ", ".join(f"{k} {100 * v:.1f}%" for k, v in own.items()), ""]
    if skipped:
        body += ["n/a: " + "; ".join(sorted(set(skipped.values()))), ""]
    for metric, title in (("in_normalised", "Normalised in-distribution accuracy (% of own adapter)"),
                          ("held_normalised", "Normalised held-out accuracy (% of own adapter)"),
                          ("in_accuracy", "In-distribution accuracy (%)"),
                          ("held_accuracy", "Held-out accuracy (%)")):
        body += [f"### {title}", "", table(cfg, data, metric, skipped, failed), ""]
    for metric, name in (("in_normalised", "multitask_in.png"), ("held_normalised", "multitask_held.png")):
        if plot(cfg, data, metric, out_dir / name):
            body += [f"![{SPLITS[metric.split('_')[0]]} accuracy vs N]({name})", ""]
    metrics = {kind: {method: {str(n): {k: statistics.fmean(v) for k, v in cell.items() if v}
                               for n, cell in by_n.items()} for method, by_n in methods.items()}
               for kind, methods in data.items()}
    return body, {"cells": metrics, "own_accuracy": own, "not_applicable": sorted(map(list, skipped))}
