"""The few-shot benchmark's section of the report (METHOD.md 8): the sweep's caps, result
tables, paired tests, figures and the published numbers."""

from __future__ import annotations

from pathlib import Path

from mera.config import SweepConfig
from mera.report.figures import gain_heatmap, plan_example, plot, plot_plan
from mera.report.paper import paper_section
from mera.report.stats import BOOTSTRAP, comparison_table
from mera.report.tables import failed_cells, group_deltas, missing_cells, table


def _adapter_label(cfg: SweepConfig) -> str:
    m = cfg.model
    if m.adapter == "lora":
        return f"LoRA adapter (query, value) rank {m.lora_rank}, alpha {m.lora_alpha}"
    kind = "Houlsby (double_seq_bn)" if m.adapter == "houlsby" else "Pfeiffer bottleneck adapter (seq_bn)"
    return f"{kind} reduction factor {m.reduction_factor}"


def _caps(cfg: SweepConfig, shots: list[int]) -> list[str]:
    p, f = cfg.pretrain, cfg.fewshot
    lrs = ", ".join(f"{k} {v:g}" for k, v in sorted(f.lr_by_init.items()))
    return [
        f"- base model: `{cfg.model.name}`, {_adapter_label(cfg)}, max_length {cfg.model.max_length}",
        f"- source adapters: {', '.join(p.tasks)}; {p.epochs} epoch(s), lr {p.lr}, batch {p.batch_size}, "
        f"examples per source capped at {p.max_examples or 'none (full train split)'}",
        f"- few-shot: K per class {shots}, seeds {f.seeds}, {f.epochs} epochs with at least {f.min_steps} steps, "
        f"batch {f.batch_size}, lr {f.lr:g} for adapter inits ({lrs}); final checkpoint, no early stopping",
        f"- best-source picks on a K-shot dev sample ({f.dev_k or 'K'} per class) drawn from the train split, "
        "disjoint from the training sample; never the validation split",
        f"- evaluation: validation split, capped at {cfg.data.max_eval or 'none (full split)'} examples (seeded)",
        "- merge groups never include the target's own adapter (AdapterFusion's paper included it); "
        "† = a group of one source: every merge is that adapter (single-source)",
        "- **bold** = best mean of its target and K; Δ in accuracy points; p = two-sided Wilcoxon signed-rank "
        "over (target, K, seed) pairs; same sign = share of "
        f"{BOOTSTRAP} bootstrap resamples of the seeds (with replacement) whose mean Δ has the sign of the "
        "observed one",
    ]


def fewshot_section(cfg: SweepConfig, results, acc, f1, shots, tracks, tests, merges, failures,
                    out_dir: Path, todo: list[dict] | None = None) -> list[str]:
    """The few-shot benchmark's tables, tests and plots (METHOD.md 8)."""
    body = [*_caps(cfg, shots), "",
            "## Accuracy (%), mean ± std over seeds", "",
            table(acc, shots, failed_cells(failures or []), missing_cells(todo or [])), "",
            "## (a) OT merges vs naive merges", "", comparison_table(tests["ot_vs_naive"]), "",
            "## (b) Same-track vs cross-track", "", comparison_table(tests["same_vs_cross"]), "",
            "Per target, mean(same-track) − mean(cross-track):", "", group_deltas(acc, shots), "",
            "## (c) MerA vs the baselines", "", comparison_table(tests["mera_vs_baselines"]), ""]
    plot(acc, out_dir / "accuracy_vs_k.png")
    body += ["## Accuracy vs K", "", "![accuracy vs K](accuracy_vs_k.png)", ""]
    if gain_heatmap(results, tracks, out_dir / "gain_heatmap.png"):
        body += ["## MerA gain over a fresh adapter", "", "![gain heatmap](gain_heatmap.png)", ""]
    example = plan_example(merges or [])
    if example:
        caption = plot_plan(*example, out_dir / "ot_plan.png")
        body += ["## One OT plan", "", caption, "", "![OT plan](ot_plan.png)", ""]
    body += ["## Macro-F1 (%)", "", table(f1, shots), ""]
    return body + paper_section(sorted(acc), acc, shots)
