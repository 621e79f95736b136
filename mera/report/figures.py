"""The report's figures: accuracy vs K, MerA's gain over a fresh adapter, one OT plan."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from mera.plots import pyplot, save
from mera.report.stats import MERA, by_pair


def plot(table_cells: dict, path: Path) -> None:
    """Accuracy vs K, one panel per target, one line per init."""
    plt = pyplot()
    targets = list(table_cells)
    cols = min(3, len(targets))
    rows = math.ceil(len(targets) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.8 * cols, 3.8 * rows), squeeze=False)
    for ax, target in zip(axes.flat, targets):
        for label, by_k in table_cells[target].items():
            ks = sorted(int(k) for k in by_k)
            ax.errorbar(ks, [100 * by_k[str(k)]["mean"] for k in ks], yerr=[100 * by_k[str(k)]["std"] for k in ks],
                        marker="o", capsize=3, label=label)
        ax.set(title=target, xlabel="K (examples per class)", ylabel="accuracy (%)")
        ax.set_xscale("log", base=2)
    for ax in list(axes.flat)[len(targets):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6, loc="best")
    save(fig, path)


def gain_heatmap(results: list[dict], tracks: dict[str, str], path: Path) -> bool:
    """MerA's gain over a fresh adapter (points, paired mean over K and seeds): rows = method
    x group, columns = targets grouped by track."""
    import numpy as np

    scores = by_pair(results)
    if "adapter" not in scores:
        return False
    targets = sorted({r["target"] for r in results}, key=lambda t: (tracks.get(t, ""), t))
    rows = [lab for lab in sorted(scores) if lab.split(" [")[0] in MERA]
    if not rows:
        return False
    grid = np.full((len(rows), len(targets)), np.nan)
    for i, lab in enumerate(rows):
        for j, t in enumerate(targets):
            d = [100 * (v - scores["adapter"][key]) for key, v in scores[lab].items()
                 if key[0] == t and key in scores["adapter"]]
            if d:
                grid[i, j] = statistics.fmean(d)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.3 * len(targets) + 3, 0.5 * len(rows) + 1.8))
    lim = max(1.0, float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0)
    im = ax.imshow(grid, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(len(targets)), [f"{t}\n({tracks.get(t, '?')})" for t in targets], fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    for i in range(len(rows)):
        for j in range(len(targets)):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:+.1f}", ha="center", va="center", fontsize=7)
    ax.set_title("gain over a fresh adapter (accuracy points)")
    fig.colorbar(im, ax=ax)
    save(fig, path)
    return True


def plan_example(merges: list[dict]) -> tuple[dict, dict] | None:
    """(merge manifest, diagnostics) of one aligned merge of two or more adapters, OT on weights first."""
    aligned = [m for m in merges if not m.get("single_source") and (Path(m["path"]) / "diagnostics.json").is_file()]
    for m in sorted(aligned, key=lambda m: ("acts" in m["method"], m["method"], m["target"], m["group"])):
        diag = json.loads((Path(m["path"]) / "diagnostics.json").read_text())
        if "example" in diag.get("alignment", {}):
            return m, diag
    return None


def plot_plan(merge: dict, diag: dict, path: Path) -> str:
    """Heatmap of one module's cost matrix with the OT plan's matches marked; returns a caption."""
    import numpy as np

    plt = pyplot()
    ex = diag["alignment"]["example"]
    cost, plan = np.array(ex["cost"]), np.array(ex["plan"])
    source, anchor = merge["sources"][ex["adapter"]], merge["anchor"]
    module = ex["module"].rstrip(".").replace(".adapters.mera", "").replace(".loras.mera", "")
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    im = ax.imshow(cost, cmap="viridis")
    rows, cols = np.nonzero(plan > 0.5 * plan.max())
    ax.scatter(cols, rows, s=14, c="white", marker="o", label="plan (matched units)")
    ax.plot([0, len(cost) - 1], [0, len(cost) - 1], color="red", lw=0.6, ls="--", label="identity (no alignment)")
    ax.set(xlabel=f"anchor unit ({anchor})", ylabel=f"unit of {source}", title=f"{merge['method']}: {module}")
    ax.legend(fontsize=7, loc="upper right")
    fig.colorbar(im, ax=ax, label="cost")
    save(fig, path)
    return (f"OT plan of {merge['method']} for target {merge['target']} (group {merge['group']}), module `{module}`: "
            f"units of {source} matched to the anchor {anchor}. Mean matched cost "
            f"{np.trace(cost) / len(cost):.3f} before alignment, {(cost * plan).sum() / len(cost):.3f} after.")
