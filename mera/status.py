"""The sweep's state through manifests alone, nothing run: what `mera status`, `mera report`
and a re-run of a finished sweep read."""

from __future__ import annotations

import json
from pathlib import Path

from mera import plan, stages
from mera.config import SweepConfig
from mera.unit import result


def walk(cfg: SweepConfig) -> dict[str, dict[str, list]]:
    """Per stage the finished units' results ("done"), the ids of the units not finished
    ("missing"; a unit whose upstream is missing is missing too), and of those the failure
    records of the ones whose last attempt failed ("failed"), and why the ones that finished
    once are no longer done ("damaged": their files changed)."""
    out: dict[str, dict[str, list]] = {s: {"done": [], "missing": [], "failed": [], "damaged": []}
                                       for s in plan.STAGES[:-1]}
    out["fewshot"]["todo"] = []  # the missing fine-tunes' cells, for the report to mark
    results: dict[str, dict] = {}
    for node in plan.build(cfg):
        ups = [results.get(u) for u in node.upstream]
        present = node.stage != "prepare" or (cfg.data_dir() / node.name / "meta.json").is_file()
        unit = stages.unit(cfg, node, ups) if present and None not in ups else None
        manifest, why = unit.check(cfg) if unit is not None else (None, None)
        state = out[node.stage]
        if manifest is None:
            state["missing"].append(node.id)
            if node.stage == "fewshot":
                state["todo"].append(dict(node.args))
            if unit is not None and (f := unit.failure(cfg)):
                state["failed"].append(f)
            if why:
                state["damaged"].append(f"{node.id}: {why}")
            continue
        results[node.id] = result(unit, cfg, manifest)
        state["done"].append(results[node.id])
    return out


def write_lineage(cfg: SweepConfig, until: str, state: dict | None = None) -> Path:
    """`<paths.results>/lineage/<stage>.json` for each stage up to `until`: its finished units'
    ids and `key:content`. What dvc.yaml's stages declare as outputs: it changes exactly
    when a unit or what it holds does (no times, no run ids), so `dvc status` stays clean
    after a run that changed nothing. Returns the folder."""
    from mera.artifacts import atomic_write

    state = state or walk(cfg)
    folder = cfg.paths.resolve("results") / "lineage"
    for stage in [s for s in plan.stages_until(until)[:-1] if state[s]["done"] or state[s]["missing"]]:
        units = {f"{stage}/{Path(r['path']).name.rsplit('-', 1)[0]}": f"{r['key']}:{r['content']}"
                 for r in state[stage]["done"]}
        text = json.dumps({"sweep": cfg.name, "units": dict(sorted(units.items()))}, indent=1) + "\n"
        atomic_write(folder / f"{stage}.json", lambda tmp, text=text: tmp.write_text(text))
    return folder


def finished_sweep(cfg: SweepConfig, until: str = "report", state: dict | None = None) -> dict | None:
    """The results of every unit up to `until` when all are done (and, for "report", the
    report lists exactly these fine-tunes), else None. Lets a re-run of a finished sweep
    return at once, without starting the orchestrator."""
    from mera.report import report_keys

    state = state or walk(cfg)
    done_stages = [s for s in plan.stages_until(until) if s in state]
    if any(state[s]["missing"] for s in done_stages):
        return None
    reported = state["fewshot"]["done"] + state["mergeeval"]["done"]
    if until == "report" and report_keys(cfg) != sorted(r["key"] for r in reported):
        return None
    return {s: state[s]["done"] for s in done_stages}
