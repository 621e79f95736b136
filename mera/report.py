"""Tables and plots from the fine-tune manifests (works with MLflow down)."""

from __future__ import annotations

import json
import os
import statistics
from collections import defaultdict
from pathlib import Path

from mera.config import SweepConfig


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


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    write(tmp)
    os.replace(tmp, path)


def table(table_cells: dict, shots: list[int]) -> str:
    head = "| target | init | " + " | ".join(f"K={k}" for k in shots) + " |"
    lines = [head, "|" + "---|" * (2 + len(shots))]
    for target, inits in table_cells.items():
        for label, by_k in inits.items():
            row = []
            for k in shots:
                c = by_k.get(str(k))
                row.append("-" if c is None else f"{100 * c['mean']:.1f} ± {100 * c['std']:.1f} (N={c['n']})")
            mark = " †" if any(c["single_source"] for c in by_k.values()) else ""
            lines.append(f"| {target} | {label}{mark} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot(table_cells: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = list(table_cells)
    fig, axes = plt.subplots(1, len(targets), figsize=(4.5 * len(targets), 3.6), squeeze=False)
    for ax, target in zip(axes[0], targets):
        for label, by_k in table_cells[target].items():
            ks = sorted(int(k) for k in by_k)
            ax.errorbar(ks, [100 * by_k[str(k)]["mean"] for k in ks], yerr=[100 * by_k[str(k)]["std"] for k in ks],
                        marker="o", capsize=3, label=label)
        ax.set(title=target, xlabel="K (examples per class)", ylabel="accuracy (%)")
        ax.set_xscale("log", base=2)
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    _atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

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
    fig.tight_layout()
    _atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)
    return (f"OT plan of {merge['method']} for target {merge['target']} (group {merge['group']}), module `{module}`: "
            f"units of {source} matched to the anchor {anchor}. Mean matched cost "
            f"{np.trace(cost) / len(cost):.3f} before alignment, {(cost * plan).sum() / len(cost):.3f} after.")


def write_report(cfg: SweepConfig, results: list[dict], timings: dict[str, float] | None = None,
                 merges: list[dict] | None = None) -> Path:
    """reports/<name>/report.md + accuracy_vs_k.png (+ ot_plan.png), and results/metrics.json for DVC."""
    out_dir = cfg.paths.resolve("reports") / cfg.name
    acc, f1 = cells(results, "accuracy"), cells(results, "macro_f1")
    shots = sorted(cfg.fewshot.shots)
    p, f = cfg.pretrain, cfg.fewshot
    caps = [
        f"- base model: `{cfg.model.name}`, {_adapter_label(cfg)}, max_length {cfg.model.max_length}",
        f"- source adapters: {', '.join(p.tasks)}; {p.epochs} epoch(s), lr {p.lr}, batch {p.batch_size}, "
        f"examples per source capped at {p.max_examples or 'none (full train split)'}",
        f"- few-shot: K per class {shots}, seeds {f.seeds}, {f.epochs} epochs with at least {f.min_steps} steps, "
        f"lr {f.lr}, batch {f.batch_size}; final checkpoint, no early stopping",
        f"- evaluation: validation split, capped at {cfg.data.max_eval or 'none (full split)'} examples (seeded)",
        "- merge groups never include the target's own adapter; † = a group of one source (every merge is that adapter)",
    ]
    body = [f"# mera-bench report: {cfg.name}", "", *caps, "", "## Accuracy (%), mean ± std over seeds", "",
            table(acc, shots), "", "## Macro-F1 (%)", "", table(f1, shots), "",
            "![accuracy vs K](accuracy_vs_k.png)", ""]
    example = plan_example(merges or [])
    if example:
        caption = plot_plan(*example, out_dir / "ot_plan.png")
        body += ["## One OT plan", "", caption, "", "![OT plan](ot_plan.png)", ""]
    if timings:
        body += ["## Wall time per stage (s)", "", "| stage | seconds |", "|---|---|",
                 *[f"| {k} | {v:.1f} |" for k, v in timings.items()], ""]
    plot(acc, out_dir / "accuracy_vs_k.png")
    report = out_dir / "report.md"
    _atomic_write(report, lambda p: p.write_text("\n".join(body)))
    metrics = {"sweep": cfg.name, "accuracy": acc, "macro_f1": f1,
               "mean_accuracy_by_init": _mean_by_init(acc), "units": sorted(r["key"] for r in results)}
    _atomic_write(cfg.paths.resolve("results") / "metrics.json",
                  lambda p: p.write_text(json.dumps(metrics, indent=1, sort_keys=True)))
    return report


def _adapter_label(cfg: SweepConfig) -> str:
    m = cfg.model
    if m.adapter == "lora":
        return f"LoRA adapter (query, value) rank {m.lora_rank}, alpha {m.lora_alpha}"
    kind = "Houlsby (double_seq_bn)" if m.adapter == "houlsby" else "Pfeiffer bottleneck adapter (seq_bn)"
    return f"{kind} reduction factor {m.reduction_factor}"


def report_keys(cfg: SweepConfig) -> list[str] | None:
    """The fine-tune keys the current report was written from (None: no report yet)."""
    report = cfg.paths.resolve("reports") / cfg.name / "report.md"
    metrics = cfg.paths.resolve("results") / "metrics.json"
    if not report.is_file() or not metrics.is_file():
        return None
    data = json.loads(metrics.read_text())
    return data.get("units") if data.get("sweep") == cfg.name else None


def _mean_by_init(table_cells: dict) -> dict:
    pooled: dict = defaultdict(list)
    for inits in table_cells.values():
        for label, by_k in inits.items():
            for k, c in by_k.items():
                pooled[f"{label} K={k}"].append(c["mean"])
    return {k: statistics.fmean(v) for k, v in sorted(pooled.items())}
