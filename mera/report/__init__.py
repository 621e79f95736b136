"""The report: tables, paired tests and plots from the fine-tune manifests (works with
MLflow down). Markdown, a self-contained HTML page, and results/metrics.json for DVC.

It answers the questions users come with (METHOD.md 8): (a) do OT merges beat naive
merges, (b) same-track vs cross-track, (c) MerA vs AdapterFusion, head, full fine-tuning,
the best single source and a fresh adapter: paired over (target, K, seed), Wilcoxon.

Modules: tables (cells, result tables), stats (paired tests, seed bootstrap), figures,
paper (published numbers), html, fewshot and multitask (the two studies' sections).
"""

from __future__ import annotations

import json
from pathlib import Path

from mera.artifacts import atomic_write
from mera.config import SweepConfig
from mera.report.fewshot import fewshot_section
from mera.report.html import to_html
from mera.report.multitask import section as multitask_section
from mera.report.stats import comparison_table, comparisons, paired, seed_stability
from mera.report.tables import cells, mean_by_init, missing_cells, table

__all__ = ["cells", "comparison_table", "missing_cells", "paired", "report_keys", "seed_stability",
           "summary_metrics", "table", "write_report"]


def write_report(cfg: SweepConfig, results: list[dict], timings: dict[str, float] | None = None,
                 merges: list[dict] | None = None, failures: list[dict] | None = None,
                 mergeevals: list[dict] | None = None, todo: list[dict] | None = None) -> Path:
    """reports/<name>/report.md + report.html + plots, and results/metrics.json for DVC.
    `mergeevals`: the multitask study's results and failures; `todo`: the cells of fine-tunes
    not finished yet (a partial sweep's report says how many and marks them)."""
    out_dir = cfg.paths.resolve("reports") / cfg.name
    acc, f1 = cells(results, "accuracy"), cells(results, "macro_f1")
    shots = sorted(cfg.fewshot.shots)
    tracks = {r["target"]: r.get("track", "?") for r in results}
    tests = comparisons(results)
    body = [f"# mera-bench report: {cfg.name}", ""]
    if todo:
        body += [f"**Partial sweep: {len(todo)} of {len(todo) + len(results)} planned fine-tunes have not finished** "
                 "(cells marked `missing`); `mera run` completes it, `mera report` then rewrites this page.", ""]
    if cfg.fewshot.targets:
        body += fewshot_section(cfg, results, acc, f1, shots, tracks, tests, merges, failures, out_dir, todo)
    multitask = None
    if cfg.multitask is not None:
        lines, multitask = multitask_section(cfg, mergeevals or [], out_dir)
        body += lines
    saved = out_dir / "timings.json"  # the last `mera run`'s, for a report rewritten by `mera report`
    if timings:
        atomic_write(saved, lambda p: p.write_text(json.dumps(timings)))
    elif saved.is_file():
        timings = json.loads(saved.read_text())
    if timings:
        body += ["## Wall time per stage (s)", "", "| stage | seconds |", "|---|---|",
                 *[f"| {k} | {v:.1f} |" for k, v in timings.items()], ""]
    text = "\n".join(body)
    report = out_dir / "report.md"
    atomic_write(report, lambda p: p.write_text(text))
    atomic_write(out_dir / "report.html", lambda p: p.write_text(to_html(text, out_dir, cfg.name)))
    done_evals = [e for e in mergeevals or [] if "summary" in e]
    metrics = {"sweep": cfg.name, "accuracy": acc, "macro_f1": f1, "comparisons": tests, "failed": failures or [],
               "mean_accuracy_by_init": mean_by_init(acc),
               "units": sorted(r["key"] for r in results + done_evals), "missing": len(todo or []),
               **({"multitask": multitask} if multitask is not None else {})}
    atomic_write(cfg.paths.resolve("results") / "metrics.json",
                  lambda p: p.write_text(json.dumps(metrics, indent=1, sort_keys=True)))
    return report


def report_keys(cfg: SweepConfig) -> list[str] | None:
    """The fine-tune keys the current report was written from (None: no report yet)."""
    report = cfg.paths.resolve("reports") / cfg.name / "report.md"
    metrics = cfg.paths.resolve("results") / "metrics.json"
    if not report.is_file() or not metrics.is_file():
        return None
    data = json.loads(metrics.read_text())
    return data.get("units") if data.get("sweep") == cfg.name else None


def summary_metrics(results: list[dict]) -> dict[str, float]:
    """Mean accuracy per init and K over the targets, named for MLflow (the sweep's run):
    accuracy/<init>[/<group>]/K<k>."""
    out = {}
    for key, value in mean_by_init(cells(results)).items():
        label, k = key.rsplit(" K=", 1)
        out[f"accuracy/{label.replace(' [', '/').rstrip(']').replace(':', '-')}/K{k}"] = value
    return out
