"""One unit of work per stage: prepare a task, pretrain a source adapter, merge a group,
fine-tune few-shot. Each is keyed, skipped when its manifest exists, written atomically
and recorded as one MLflow child run. Pure library: the orchestration lives in flows/.
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from mera import artifacts, data
from mera.config import FRESH_INIT, SweepConfig
from mera.tasks import TASK_VERSION, read_task
from mera.tracking import Tracker, flatten

STAGES = ("prepare", "pretrain", "merge", "fewshot", "report")
ADAPTER_SUBDIR = "adapter"
EVAL_SEED = 0  # the validation cap draws the same examples for every run


def tracker(cfg: SweepConfig) -> Tracker:
    store = cfg.paths.mlflow if "://" in cfg.paths.mlflow else cfg.paths.resolve("mlflow")
    return Tracker(store, experiment=f"mera-{cfg.name}")


def sweep_key(cfg: SweepConfig) -> str:
    return artifacts.unit_key("sweep", cfg.model_dump(exclude={"paths", "run"}))


@dataclass(frozen=True)
class Unit:
    """Where a unit's result lives and what identifies it."""

    stage: str
    readable: str
    params: dict

    @property
    def key(self) -> str:
        return artifacts.unit_key(self.stage, self.params)

    def path(self, cfg: SweepConfig) -> Path:
        return artifacts.unit_dir(cfg.paths.resolve("artifacts"), self.stage, self.readable, self.key)

    def done(self, cfg: SweepConfig) -> dict | None:
        return artifacts.read_manifest(self.path(cfg))


def _result(unit: Unit, cfg: SweepConfig, manifest: dict) -> dict:
    return {**manifest, "key": unit.key, "path": str(unit.path(cfg))}


def _run_unit(cfg: SweepConfig, unit: Unit, parent_id: str | None, tags: dict, work, logged: bool = True) -> dict:
    """Skip a finished unit; else run `work(tmp_dir) -> (manifest, metrics)` atomically and
    record it as an MLflow child run of the sweep (unless `logged` is False)."""
    done = unit.done(cfg)
    if done is not None:
        return _result(unit, cfg, done)
    final = unit.path(cfg)
    tags = {"mera.stage": unit.stage, "mera.sweep": cfg.name, **tags}
    run_ctx = tracker(cfg).unit_run(parent_id, unit.key, unit.readable, tags, flatten(unit.params)) if logged \
        else nullcontext(None)
    with run_ctx as run:
        start = time.perf_counter()
        with artifacts.atomic_dir(final) as tmp:
            manifest, metrics = work(tmp)
            manifest.update(stage=unit.stage, key=unit.key, params=unit.params, tags=tags,
                            seconds=time.perf_counter() - start, mlflow_run_id=run.run_id if run else None)
            artifacts.write_manifest(tmp, manifest)
        if run is not None:
            run.metrics({**metrics, "seconds": manifest["seconds"]})
            run.artifacts(final)  # the adapter (adapters-library format), manifest and diagnostics
    return _result(unit, cfg, manifest)


# ---- prepare ---------------------------------------------------------------------------

def import_data(cfg: SweepConfig) -> list[str]:
    """Bring every task the sweep reads into the data dir (from a directory or the hub),
    and version what arrived with DVC when the project is a DVC repo."""
    names = sorted(set(cfg.pretrain.tasks) | set(cfg.fewshot.targets))
    imported = data.ensure_tasks(cfg.data_dir(), cfg.data.source, names)
    if imported:
        data.version_with_dvc(cfg.data_dir())
    return imported


def prepare_unit(cfg: SweepConfig, task: str) -> Unit:
    return Unit("prepared", task, {"task": task, "data": data.task_hash(cfg.data_dir(), task),
                                   "task_version": TASK_VERSION})


def prepare(cfg: SweepConfig, task: str, parent_id: str | None = None) -> dict:
    """Validate a task's splits and record its content hash, track and sizes."""
    spec = read_task(cfg.data_dir(), task)
    unit = prepare_unit(cfg, task)
    digest = unit.params["data"]

    def work(tmp: Path):
        rows = {s: len(data.load_split(cfg.data_dir(), spec, s)) for s in data.SPLITS}
        manifest = {"task": task, "track": spec.track, "label_names": list(spec.label_names), "hash": digest,
                    "rows": rows}
        return manifest, {f"rows_{s}": n for s, n in rows.items()}

    return _run_unit(cfg, unit, parent_id, {"task": task, "track": spec.track}, work, logged=False)


# ---- pretrain --------------------------------------------------------------------------

def pretrain_unit(cfg: SweepConfig, prep: dict) -> Unit:
    settings = cfg.pretrain.model_dump(exclude={"tasks"})
    return Unit("adapters", prep["task"], {"task": prep["task"], "data": prep["hash"], "model": cfg.model.model_dump(),
                                           "pretrain": settings, "max_eval": cfg.data.max_eval})


def pretrain(cfg: SweepConfig, prep: dict, parent_id: str | None = None) -> dict:
    """Train one source adapter (distinct init seed per task) and evaluate it."""
    from mera.evaluate import evaluate
    from mera.models import build_model, save_adapter, task_seed
    from mera.train import TrainSettings, train

    unit = pretrain_unit(cfg, prep)
    task = prep["task"]

    def work(tmp: Path):
        spec = read_task(cfg.data_dir(), task)
        p = cfg.pretrain
        seed = task_seed(p.seed, task)
        model, tok = build_model(cfg.model, spec.num_labels, seed=seed)
        df = data.cap(data.load_split(cfg.data_dir(), spec, "train"), p.max_examples, seed=p.seed)
        stats = train(model, tok, df, TrainSettings(p.epochs, p.batch_size, p.lr, cfg.model.max_length, seed))
        val = data.cap(data.load_split(cfg.data_dir(), spec, "validation"), cfg.data.max_eval, EVAL_SEED)
        metrics = {**evaluate(model, tok, val, spec.num_labels, cfg.model.max_length), **stats}
        save_adapter(model, tmp / ADAPTER_SUBDIR, with_head=True)
        manifest = {"task": task, "track": prep["track"], "n_train": len(df), "n_train_available": prep["rows"]["train"],
                    "n_eval": len(val), "init_seed": seed, "metrics": metrics}
        return manifest, metrics

    return _run_unit(cfg, unit, parent_id, {"task": task, "track": prep["track"]}, work)


# ---- merge -----------------------------------------------------------------------------

def group_members(target: str, group: str, tracks: dict[str, str], sources: list[str]) -> list[str]:
    """Source tasks merged for a target; the target's own adapter is never among them."""
    others = [s for s in sources if s != target]
    if group == "same-track":
        return [s for s in others if tracks[s] == tracks[target]]
    if group == "cross-track":
        return [s for s in others if tracks[s] != tracks[target]]
    return others


def merge_grid(cfg: SweepConfig, tracks: dict[str, str]) -> list[tuple[str, str, str, list[str]]]:
    """Every merge of the sweep: (target, group, method, member tasks); empty groups are left out."""
    grid = []
    for target in cfg.fewshot.targets:
        for group in cfg.merge.groups:
            members = group_members(target, group, tracks, cfg.pretrain.tasks)
            grid += [(target, group, method, members) for method in (cfg.merge.methods if members else [])]
    return grid


def merge_unit(cfg: SweepConfig, target: str, group: str, method: str, members: list[dict]) -> Unit:
    from mera.merge import get_method

    return Unit("merged", f"{target}.{group}.{method}", {
        "target": target, "group": group, "method": method, "method_version": get_method(method).version,
        "merge_params": cfg.merge.params.get(method, {}), "members": sorted(r["key"] for r in members)})


CALIB_DEFAULTS = {"point": "pre", "calib": "sources", "calib_examples": 32, "max_tokens": 4096}
CALIB_SOURCES = ("sources", "target")
CALIB_SEED = 0  # calibration never depends on the few-shot seed: one merge serves every seed


def calibration(cfg: SweepConfig, target: str, sources: list[str], anchor_dir: Path, params: dict):
    """The activations callable for ot-acts merges: `calib_examples` training inputs from each
    source task of the group (default), or from the target's training split (`calib: target`;
    inputs only, drawn with a fixed seed, so the merge stays keyed by target x group x method)."""
    import pandas as pd

    from mera.calibrate import Activations
    from mera.models import build_model

    c = {**CALIB_DEFAULTS, **{k: params[k] for k in CALIB_DEFAULTS if k in params}}
    if c["calib"] not in CALIB_SOURCES:
        raise ValueError(f"calib {c['calib']!r} is not one of: {', '.join(CALIB_SOURCES)}")
    tasks = sources if c["calib"] == "sources" else [target]
    texts = pd.concat([data.cap(data.load_split(cfg.data_dir(), read_task(cfg.data_dir(), t), "train"),
                                int(c["calib_examples"]), seed=CALIB_SEED) for t in tasks], ignore_index=True)
    model, tok = build_model(cfg.model, 2, adapter_dir=anchor_dir)
    return Activations(model, tok, texts, cfg.model.max_length, int(c["max_tokens"]), c["point"], seed=CALIB_SEED)


def merge(cfg: SweepConfig, target: str, group: str, method: str, members: list[dict],
          parent_id: str | None = None) -> dict:
    """Fuse the group's adapters into one with the named method; saved in the adapters format."""
    from mera.merge import get_method, resolve_anchor

    params = dict(cfg.merge.params.get(method, {}))
    members = sorted(members, key=lambda r: r["task"])
    unit = merge_unit(cfg, target, group, method, members)

    def work(tmp: Path):
        from mera.merge import merge as merge_states
        from mera.models import read_adapter, write_adapter

        names = [r["task"] for r in members]
        sizes = [r["n_train_available"] for r in members]
        dirs = [Path(r["path"]) / ADAPTER_SUBDIR for r in members]
        read = [read_adapter(d) for d in dirs]
        anchor = resolve_anchor(params.get("anchor", "largest"), len(members), names, sizes)
        acts = None
        if get_method(method).align == "ot-acts" and len(members) > 1:
            acts = calibration(cfg, target, names, dirs[anchor if isinstance(anchor, int) else 0], params)
        merged, diag = merge_states(method, [st for _, st in read], activations=acts, names=names, sizes=sizes,
                                    **params)
        write_adapter(tmp / ADAPTER_SUBDIR, read[0][0], merged)
        (tmp / "diagnostics.json").write_text(json.dumps(diag, indent=1))
        metrics = {"n_sources": len(members)}
        align = diag.get("alignment")
        if align:
            before = [c for e in align["modules"].values() for c in e["cost_before"]]
            after = [c for e in align["modules"].values() for c in e["cost_after"]]
            metrics.update(cost_before=sum(before) / len(before), cost_after=sum(after) / len(after))
        chosen = align["anchor_name"] if align else (names[anchor] if isinstance(anchor, int) else None)
        manifest = {"target": target, "group": group, "method": method, "sources": names, "anchor": chosen,
                    "single_source": len(members) == 1, "metrics": metrics}
        return manifest, metrics

    return _run_unit(cfg, unit, parent_id, {"target": target, "group": group, "method": method}, work)


# ---- fewshot ---------------------------------------------------------------------------

def fewshot_unit(cfg: SweepConfig, prep: dict, init: str, group: str | None, shots: int, seed: int,
                 merged: dict | None = None) -> Unit:
    target = prep["task"]
    settings = cfg.fewshot.model_dump(exclude={"targets", "inits", "shots", "seeds"})
    readable = f"{target}.{init}" + (f".{group}" if group else "") + f".k{shots}.s{seed}"
    return Unit("fewshot", readable, {
        "target": target, "data": prep["hash"], "init": init, "group": group, "shots": shots, "seed": seed,
        "model": cfg.model.model_dump(), "fewshot": settings, "max_eval": cfg.data.max_eval,
        "init_key": merged["key"] if merged else None})


def fewshot(cfg: SweepConfig, prep: dict, init: str, group: str | None, shots: int, seed: int,
            merged: dict | None = None, parent_id: str | None = None) -> dict:
    """Fine-tune adapter + fresh head on K examples per class; evaluate on the validation split."""
    from mera.evaluate import evaluate
    from mera.models import build_model, count_trainable, save_adapter
    from mera.train import TrainSettings, train

    target = prep["task"]
    f = cfg.fewshot
    unit = fewshot_unit(cfg, prep, init, group, shots, seed, merged)

    def work(tmp: Path):
        spec = read_task(cfg.data_dir(), target)
        adapter_dir = Path(merged["path"]) / ADAPTER_SUBDIR if merged else None
        model, tok = build_model(cfg.model, spec.num_labels, adapter_dir=adapter_dir, seed=seed)
        train_df = data.sample_k_shot(data.load_split(cfg.data_dir(), spec, "train"), shots, seed, spec.num_labels)
        stats = train(model, tok, train_df, TrainSettings(f.epochs, f.batch_size, f.lr, cfg.model.max_length, seed,
                                                          min_steps=f.min_steps))
        val = data.cap(data.load_split(cfg.data_dir(), spec, "validation"), cfg.data.max_eval, EVAL_SEED)
        metrics = {**evaluate(model, tok, val, spec.num_labels, cfg.model.max_length), **stats,
                   "trainable_params": count_trainable(model)}
        save_adapter(model, tmp / ADAPTER_SUBDIR, with_head=True)
        manifest = {"target": target, "track": prep["track"], "init": init, "group": group, "shots": shots,
                    "seed": seed, "n_train": len(train_df), "n_eval": len(val), "metrics": metrics,
                    "single_source": bool(merged and merged.get("single_source")),
                    "sources": merged["sources"] if merged else []}
        return manifest, metrics

    tags = {"target": target, "init": init, "group": group or "-", "shots": shots, "seed": seed}
    return _run_unit(cfg, unit, parent_id, tags, work)


def fewshot_grid(cfg: SweepConfig, merges: dict[tuple[str, str, str], dict]) -> list[dict]:
    """Every fine-tune of the sweep: target x init (x group for merged inits) x shots x seed."""
    grid = []
    for target in cfg.fewshot.targets:
        for init in cfg.fewshot.inits:
            groups = [None] if init == FRESH_INIT else [g for g in cfg.merge.groups if (target, g, init) in merges]
            for group in groups:
                for shots in cfg.fewshot.shots:
                    for seed in cfg.fewshot.seeds:
                        grid.append({"target": target, "init": init, "group": group, "shots": shots, "seed": seed})
    return grid


def finished_sweep(cfg: SweepConfig, until: str = "report") -> dict | None:
    """Walk the sweep's DAG through manifests alone; the results when every unit up to
    `until` is done (and the report lists exactly these fine-tunes), else None.

    Lets a re-run of a finished sweep return at once, without starting the orchestrator.
    """
    from mera.report import report_keys

    def done(unit: Unit) -> dict | None:
        m = unit.done(cfg)
        return None if m is None else _result(unit, cfg, m)

    names = sorted(set(cfg.pretrain.tasks) | set(cfg.fewshot.targets))
    if any(not (cfg.data_dir() / n / "meta.json").is_file() for n in names):
        return None
    preps = {n: done(prepare_unit(cfg, n)) for n in names}
    stop = STAGES.index(until)
    if None in preps.values():
        return None
    out: dict = {"prepare": list(preps.values())}
    if stop >= 1:
        adapters = {s: done(pretrain_unit(cfg, preps[s])) for s in cfg.pretrain.tasks}
        if None in adapters.values():
            return None
        out["pretrain"] = list(adapters.values())
    if stop >= 2:
        tracks = {n: p["track"] for n, p in preps.items()}
        merges = {(target, group, method): done(merge_unit(cfg, target, group, method, [adapters[m] for m in members]))
                  for target, group, method, members in merge_grid(cfg, tracks)}
        if None in merges.values():
            return None
        out["merge"] = list(merges.values())
    if stop >= 3:
        results = []
        for u in fewshot_grid(cfg, merges):
            merged = None if u["init"] == FRESH_INIT else merges[(u["target"], u["group"], u["init"])]
            results.append(done(fewshot_unit(cfg, preps[u["target"]], u["init"], u["group"], u["shots"], u["seed"],
                                             merged)))
        if None in results:
            return None
        out["fewshot"] = results
    if stop >= 4 and report_keys(cfg) != sorted(r["key"] for r in out["fewshot"]):
        return None
    return out
