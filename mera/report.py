"""The report: tables, paired tests and plots from the fine-tune manifests (works with
MLflow down). Markdown, a self-contained HTML page, and results/metrics.json for DVC.

It answers the questions users come with (METHOD.md 8): (a) do OT merges beat naive
merges, (b) same-track vs cross-track, (c) MerA vs AdapterFusion, head, full fine-tuning,
the best single source and a fresh adapter: paired over (target, K, seed), Wilcoxon.
"""

from __future__ import annotations

import base64
import json
import math
import re
import statistics
from collections import defaultdict
from importlib import resources
from pathlib import Path

from mera.artifacts import atomic_write
from mera.config import SweepConfig
from mera.plots import pyplot, save

MERA = ("mera-wts", "mera-acts")  # the OT merges the questions are asked about
NAIVE = ("mera-avg", "mera-sum")
UNGROUPED_BASELINES = ("adapter", "head", "full")
GROUPED_BASELINES = ("fusion", "best-source")


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


# ---- paired comparisons -----------------------------------------------------------------------

def _by_pair(results: list[dict], metric: str = "accuracy") -> dict[str, dict[tuple, float]]:
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
    scores = _by_pair(results)
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
            for base in GROUPED_BASELINES:
                add("mera_vs_baselines", f"{m} [{g}]", f"{base} [{g}]")
            for base in UNGROUPED_BASELINES:
                add("mera_vs_baselines", f"{m} [{g}]", base)
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


# ---- published reference numbers ---------------------------------------------------------------

def paper_numbers() -> dict:
    import yaml

    return yaml.safe_load(resources.files("mera").joinpath("paper_numbers.yaml").read_text())


def paper_section(targets: list[str], table_cells: dict, shots: list[int]) -> list[str]:
    ref = paper_numbers()
    names = ref["task_names"]
    t1 = ref["adapterfusion_table1"]
    rows = [t for t in targets if names.get(t) in t1["rows"]]
    out = ["## Published reference numbers (full data, BERT-base; not comparable to few-shot)", "",
           f"{t1['title']}. Rows for this sweep's targets, and the paper's mean.", "",
           "| task | " + " | ".join(t1["columns"]) + " |", "|" + "---|" * (1 + len(t1["columns"]))]
    for t in [*rows, None]:
        key = names[t] if t else "Mean"
        out.append(f"| {key} | " + " | ".join(f"{v:.2f}" for v in t1["rows"][key]) + " |")
    claims = ref["mera_claims"]
    out += ["", f"{claims['title']}; next to ours (best K, same-track mera-wts / mera-acts minus the better of "
            "full and adapter, mean over seeds):", "", "| task | MerA claim | ours: mera-wts | ours: mera-acts |",
            "|---|---|---|---|"]
    for task, delta in claims["delta"].items():
        ours = [_same_track_delta(table_cells.get(task.lower(), {}), m, shots) for m in MERA]
        out.append(f"| {task} | +{delta:.1f} | " + " | ".join("-" if d is None else f"{d:+.1f}" for d in ours) + " |")
    return out + [""]


def _same_track_delta(inits: dict, method: str, shots: list[int]) -> float | None:
    label = f"{method} [same-track]"
    if label not in inits:
        return None
    deltas = []
    for k in shots:
        base = [inits[b][str(k)]["mean"] for b in ("full", "adapter") if b in inits and str(k) in inits[b]]
        if base and str(k) in inits[label]:
            deltas.append(100 * (inits[label][str(k)]["mean"] - max(base)))
    return max(deltas) if deltas else None


# ---- plots ----------------------------------------------------------------------------------------

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

    scores = _by_pair(results)
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


# ---- the report -----------------------------------------------------------------------------------

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
        from mera.multitask_report import section

        lines, multitask = section(cfg, mergeevals or [], out_dir)
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
               "mean_accuracy_by_init": _mean_by_init(acc),
               "units": sorted(r["key"] for r in results + done_evals), "missing": len(todo or []),
               **({"multitask": multitask} if multitask is not None else {})}
    atomic_write(cfg.paths.resolve("results") / "metrics.json",
                  lambda p: p.write_text(json.dumps(metrics, indent=1, sort_keys=True)))
    return report


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


_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}th,td{border:1px solid #ccc;padding:3px 8px}
th{background:#f0f0f0}tr:nth-child(even){background:#fafafa}img{max-width:100%}code{background:#f4f4f4}"""


def to_html(markdown_text: str, image_dir: Path, title: str) -> str:
    """One self-contained page: the Markdown rendered, every image embedded as a data URI."""
    import markdown

    html = markdown.markdown(markdown_text, extensions=["tables"])

    def embed(m: re.Match) -> str:
        f = image_dir / m.group(1)
        data = base64.b64encode(f.read_bytes()).decode() if f.is_file() else ""
        return f'src="data:image/png;base64,{data}"'

    html = re.sub(r'src="([^"/:]+\.png)"', embed, html)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>mera-bench: {title}</title>"
            f"<style>{_STYLE}</style></head><body>{html}</body></html>")


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
    for key, value in _mean_by_init(cells(results)).items():
        label, k = key.rsplit(" K=", 1)
        out[f"accuracy/{label.replace(' [', '/').rstrip(']').replace(':', '-')}/K{k}"] = value
    return out


def _mean_by_init(table_cells: dict) -> dict:
    pooled: dict = defaultdict(list)
    for inits in table_cells.values():
        for label, by_k in inits.items():
            for k, c in by_k.items():
                pooled[f"{label} K={k}"].append(c["mean"])
    return {k: statistics.fmean(v) for k, v in sorted(pooled.items())}
