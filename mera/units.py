"""One unit of work per stage: prepare a task, pretrain a source adapter, merge a group,
fine-tune few-shot. Each is keyed, skipped when its manifest exists, written atomically
and recorded as one MLflow child run. Pure library: the orchestration lives in flows/.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

from mera import artifacts, data
from mera.config import ConfigError, SweepConfig
from mera.inits import Init
from mera.tasks import TASK_VERSION, read_task
from mera.tracking import Tracker, flatten

STAGES = ("prepare", "pretrain", "merge", "fewshot", "mergeeval", "report")
ADAPTER_SUBDIR = "adapter"
EVAL_SEED = 0  # the validation cap draws the same examples for every run


_TRACKING: ContextVar[bool] = ContextVar("mera_tracking", default=True)


@contextmanager
def untracked():
    """Run units without MLflow (results still land in the artifact store): for library use
    without a store, and for bench/overhead.py's plain loop."""
    token = _TRACKING.set(False)
    try:
        yield
    finally:
        _TRACKING.reset(token)


def tracker(cfg: SweepConfig) -> Tracker:
    store = cfg.paths.mlflow if "://" in cfg.paths.mlflow else cfg.paths.resolve("mlflow")
    return Tracker(store, experiment=f"mera-{cfg.name}")


def sweep_key(cfg: SweepConfig) -> str:
    exclude = {"paths", "run"} | ({"multitask"} if cfg.multitask is None else set())  # keys from before it existed
    return artifacts.unit_key("sweep", {**cfg.model_dump(exclude=exclude), "model": cfg.model.identity()})


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

    def failure_path(self, cfg: SweepConfig) -> Path:
        path = self.path(cfg)
        return path.parent / ".failed" / f"{path.name}.json"

    def failure(self, cfg: SweepConfig) -> dict | None:
        """The last attempt's error when the unit failed and has not finished since."""
        f = self.failure_path(cfg)
        return json.loads(f.read_text()) if f.is_file() else None

    def attempts_path(self, cfg: SweepConfig) -> Path:
        """How many MLflow runs the unit has had and the last one's id (`_run_unit`)."""
        path = self.path(cfg)
        return path.parent / ".attempts" / f"{path.name}.json"


def runtime(cfg: SweepConfig):
    """The device, precision and evaluation batch of this run (mera.train.Runtime)."""
    from mera.train import Runtime

    return Runtime.of(cfg.run.device, cfg.run.precision, cfg.run.eval_batch_size)


def eval_tokens(cfg: SweepConfig, spec, tokenizer, df, data_hash: str):
    """The validation split's tokens, subset to df's rows (the split or a capped sample of
    it that kept the split's index). Every fine-tune of a target evaluates on the same rows,
    so the split is tokenised once per tokenizer, max_length and task content and cached;
    a K-shot training sample is small enough to tokenise where it is used."""
    from mera.tokens import cached

    items = cached(tokenizer, lambda: data.load_split(cfg.data_dir(), spec, "validation"), cfg.model.max_length,
                   cfg.paths.resolve("artifacts") / "tokens", f"{spec.name}.validation", data_hash)
    if len(df) and int(df.index.max()) >= len(items):
        raise ValueError(f"{spec.name}: validation rows beyond the split's {len(items)} (index not kept)")
    return items.subset(df.index)


def validation_scores(cfg: SweepConfig, spec, data_hash: str, model, tokenizer, rt) -> tuple[int, dict[str, float]]:
    """Accuracy and macro-F1 of a trained model on its task's validation split (seeded cap
    `data.max_eval`), on the split's cached tokens and the run's device: (rows, metrics)."""
    from mera.evaluate import evaluate

    val = data.cap(data.load_split(cfg.data_dir(), spec, "validation"), cfg.data.max_eval, EVAL_SEED)
    return len(val), evaluate(model, tokenizer, val, spec.num_labels, cfg.model.max_length,
                              items=eval_tokens(cfg, spec, tokenizer, val, data_hash), device=rt.device, bf16=rt.bf16,
                              batch_size=rt.eval_batch_size)


def settle_dead_runs(cfg: SweepConfig) -> dict[str, int]:
    """Close the unit runs a killed process left RUNNING (the caller holds the sweep lock, so
    no live attempt exists): FINISHED when the unit's manifest names that run (it was killed
    after its result landed, everything already logged), else KILLED. Returns the counts."""
    counts = {"FINISHED": 0, "KILLED": 0}
    track = tracker(cfg)
    root = cfg.paths.resolve("artifacts")
    for run in track.running_units():
        tags = run.data.tags
        path = artifacts.unit_dir(root, tags.get("mera.stage", "?"), tags.get("mlflow.runName", run.info.run_name),
                                  tags.get("mera.key", "?"))
        manifest = artifacts.read_manifest(path)
        status = "FINISHED" if manifest and manifest.get("mlflow_run_id") == run.info.run_id else "KILLED"
        track.end(run.info.run_id, status)
        counts[status] += 1
    return counts


def _result(unit: Unit, cfg: SweepConfig, manifest: dict) -> dict:
    return {**manifest, "key": unit.key, "path": str(unit.path(cfg))}


FAULT_ENV = "MERA_FAULT"  # "<unit name prefix>:<attempts>[:config]": fail those attempts (resilience tests)
_faults: dict[str, int] = {}


def _injected_fault(unit: Unit) -> None:
    """Fail the first attempts of a unit on purpose when MERA_FAULT names it: a transient
    error (retried) by default, or a config error (never retried)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    prefix, times, kind = (spec.split(":") + ["1", "transient"])[:3]
    if not unit.readable.startswith(prefix) or _faults.get(unit.key, 0) >= int(times):
        return
    _faults[unit.key] = _faults.get(unit.key, 0) + 1
    if kind == "config":
        raise ConfigError(f"injected config error in {unit.readable} ({FAULT_ENV})")
    raise RuntimeError(f"injected transient failure {_faults[unit.key]}/{times} in {unit.readable} ({FAULT_ENV})")


@contextmanager
def _unit_run(cfg: SweepConfig, unit: Unit, parent_id: str | None, tags: dict):
    """The unit's MLflow run, numbered by the unit's attempt record, which is kept beside its
    artifacts (read and written here, one small file): finding earlier attempts by a tag
    search instead cost a scan of the experiment's tags per unit (~2 ms on a new store,
    ~18 ms at 20,000 runs). The record is written once the run is open; a previous attempt
    still RUNNING (its process was killed mid-sweep) is closed KILLED."""
    record = unit.attempts_path(cfg)
    try:
        last = json.loads(record.read_text())
        attempt, previous = int(last["attempts"]) + 1, last.get("run_id")
    except (OSError, ValueError, TypeError, KeyError):  # none yet, or damaged: counting starts again
        attempt, previous = 1, None

    with tracker(cfg).unit_run(parent_id, unit.key, unit.readable, tags, flatten(unit.params),
                               attempt=attempt, previous=previous) as run:
        artifacts.atomic_write(record, lambda tmp: tmp.write_text(json.dumps({"attempts": attempt,
                                                                              "run_id": run.run_id})))
        yield run


def _run_unit(cfg: SweepConfig, unit: Unit, parent_id: str | None, tags: dict, work, logged: bool = True) -> dict:
    """Skip a finished unit; else run `work(tmp_dir) -> (manifest, metrics)` atomically and
    record it as an MLflow child run of the sweep (unless `logged` is False)."""
    done = unit.done(cfg)
    if done is not None:
        return _result(unit, cfg, done)
    final = unit.path(cfg)
    tags = {"mera.stage": unit.stage, "mera.sweep": cfg.name, **tags}
    logged = logged and _TRACKING.get()
    run_ctx = _unit_run(cfg, unit, parent_id, tags) if logged else nullcontext(None)
    failure = unit.failure_path(cfg)
    try:
        with run_ctx as run:
            start = time.perf_counter()
            with artifacts.atomic_dir(final) as tmp:
                _injected_fault(unit)
                manifest, metrics = work(tmp)
                manifest.update(stage=unit.stage, key=unit.key, params=unit.params, tags=tags,
                                seconds=time.perf_counter() - start, mlflow_run_id=run.run_id if run else None)
                artifacts.write_manifest(tmp, manifest)
                if run is not None:  # logged before the manifest becomes visible: a finished unit's run is complete
                    run.metrics({**metrics, "seconds": manifest["seconds"]})
                    run.artifacts(tmp)  # the adapter (adapters-library format), manifest and diagnostics
    except Exception as exc:  # remembered for `mera status`; the exception goes on to the orchestrator
        failure.parent.mkdir(parents=True, exist_ok=True)
        failure.write_text(json.dumps({"unit": unit.readable, "key": unit.key, "error": f"{type(exc).__name__}: {exc}",
                                       "at": time.strftime("%Y-%m-%d %H:%M:%S")}))
        raise
    failure.unlink(missing_ok=True)
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

def adapter_name(task: str, kind: str) -> str:
    """A pretrained adapter's readable name: the task, plus the kind when not a bottleneck."""
    return task if kind == "bottleneck" else f"{task}.{kind}"


def pretrain_unit(cfg: SweepConfig, prep: dict) -> Unit:
    settings = cfg.pretrain.model_dump(exclude={"tasks"})
    return Unit("adapters", adapter_name(prep["task"], cfg.model.adapter), {
        "task": prep["task"], "data": prep["hash"], "model": cfg.model.identity(), "pretrain": settings,
        "max_eval": cfg.data.max_eval})


def pretrain(cfg: SweepConfig, prep: dict, parent_id: str | None = None) -> dict:
    """Train one source adapter (distinct init seed per task) and evaluate it."""
    from mera import deltas
    from mera.heads import name_labels
    from mera.models import build_model, save_adapter, task_seed
    from mera.train import TrainSettings, train

    unit = pretrain_unit(cfg, prep)
    task = prep["task"]

    def work(tmp: Path):
        spec = read_task(cfg.data_dir(), task)
        p = cfg.pretrain
        seed = task_seed(p.seed, task)
        rt = runtime(cfg)
        m = cfg.model
        delta = m.adapter in deltas.KINDS
        model, tok = build_model(m, spec.num_labels, seed=seed, adapter=not delta)
        df = data.cap(data.load_split(cfg.data_dir(), spec, "train"), p.max_examples, seed=p.seed)
        if delta:  # sparse / full: a delta on the base weights (mera.deltas)
            before, masks, delta_info = deltas.prepare_training(
                model, tok, df, m.adapter, density=m.density, rule=m.saliency, reduction_factor=m.reduction_factor,
                max_length=m.max_length, batches=m.saliency_batches, batch_size=p.batch_size, seed=seed)
        stats = train(model, tok, df, TrainSettings(p.epochs, p.batch_size, p.lr, cfg.model.max_length, seed,
                                                    device=rt.device, bf16=rt.bf16))
        n_eval, scores = validation_scores(cfg, spec, prep["hash"], model, tok, rt)
        metrics = {**scores, **stats}
        name_labels(model, spec.label_names)
        if delta:
            deltas.save_trained(model, tmp / ADAPTER_SUBDIR, before, masks, delta_info)
        else:
            save_adapter(model.to("cpu"), tmp / ADAPTER_SUBDIR, with_head=True)
        manifest = {"task": task, "track": prep["track"], "n_train": len(df),
                    "n_train_available": prep["rows"]["train"],
                    "n_eval": n_eval, "init_seed": seed, "metrics": metrics, "runtime": rt.describe(),
                    **({"delta": delta_info} if delta else {})}
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


def calibration(cfg: SweepConfig, target: str, sources: list[str], anchor_dir: Path, params: dict):
    """The activations callable for ot-acts merges: training inputs from each source task of
    the group (default), or from the target's training split (`calib: target`; inputs only,
    drawn with a fixed seed, so the merge stays keyed by target x group x method)."""
    from mera.calibrate import from_tasks

    tasks = sources if params.get("calib", "sources") == "sources" else [target]
    return from_tasks(cfg.model, anchor_dir, cfg.data_dir(), tasks, params)


def merge_members(cfg: SweepConfig, target: str, method: str, params: dict, members: list[dict]):
    """Read the members' adapters (results of pretrain, in order) and merge them with
    `method`, calibrating ot-acts methods on the sources' (or target's) inputs. Returns
    (the first adapter's config, merged tensors, diagnostics, the resolved anchor)."""
    from mera.merge import get_method, resolve_anchor
    from mera.merge import merge as merge_states
    from mera.models import read_adapter

    names = [r["task"] for r in members]
    sizes = [r["n_train_available"] for r in members]
    dirs = [Path(r["path"]) / ADAPTER_SUBDIR for r in members]
    read = [read_adapter(d) for d in dirs]
    anchor = resolve_anchor(params.get("anchor", "largest"), len(members), names, sizes)
    acts = None
    if get_method(method).align == "ot-acts" and len(members) > 1:
        acts = calibration(cfg, target, names, dirs[anchor if isinstance(anchor, int) else 0], params)
    merged, diag = merge_states(method, [st for _, st in read], activations=acts, names=names, sizes=sizes, **params)
    return read[0][0], merged, diag, anchor


def merge(cfg: SweepConfig, target: str, group: str, method: str, members: list[dict],
          parent_id: str | None = None) -> dict:
    """Fuse the group's adapters into one with the named method; saved in the adapters format."""
    from mera.merge import mean_costs

    params = dict(cfg.merge.params.get(method, {}))
    members = sorted(members, key=lambda r: r["task"])
    unit = merge_unit(cfg, target, group, method, members)

    def work(tmp: Path):
        from mera.models import write_adapter

        names = [r["task"] for r in members]
        meta, merged, diag, anchor = merge_members(cfg, target, method, params, members)
        write_adapter(tmp / ADAPTER_SUBDIR, meta, merged)
        (tmp / "diagnostics.json").write_text(json.dumps(diag, indent=1))
        metrics = {"n_sources": len(members), **mean_costs(diag)}
        align = diag.get("alignment")
        chosen = align["anchor_name"] if align else (names[anchor] if isinstance(anchor, int) else None)
        manifest = {"target": target, "group": group, "method": method, "sources": names, "anchor": chosen,
                    "single_source": len(members) == 1, "metrics": metrics}
        return manifest, metrics

    tags = {"target": target, "group": group, "method": method, "members": ",".join(sorted(r["task"] for r in members))}
    return _run_unit(cfg, unit, parent_id, tags, work)


# ---- fewshot ---------------------------------------------------------------------------

INIT_VERSION = 2  # bump when what an init trains changes: it enters every fine-tune's key


def fewshot_settings(cfg: SweepConfig, init: Init) -> dict:
    """The few-shot settings that apply to `init` (its lr, not every init's)."""
    f = cfg.fewshot
    settings = {"epochs": f.epochs, "min_steps": f.min_steps, "batch_size": f.batch_size, "lr": f.lr_for(init.kind),
                "weight_decay": f.weight_decay_full if init.kind == "full" else 0.0, "init_version": INIT_VERSION}
    if init.kind == "best-source":
        settings["dev_k"] = f.dev_k
    if init.kind == "fusion":
        settings["fusion_reg"] = f.fusion_reg
    return settings


def fewshot_unit(cfg: SweepConfig, prep: dict, init: Init, group: str | None, shots: int, seed: int,
                 upstream: list[dict]) -> Unit:
    target = prep["task"]
    readable = f"{target}.{init.name.replace(':', '-')}" + (f".{group}" if group else "") + f".k{shots}.s{seed}"
    return Unit("fewshot", readable, {
        "target": target, "data": prep["hash"], "init": init.name, "group": group, "shots": shots, "seed": seed,
        "model": cfg.model.identity(), "fewshot": fewshot_settings(cfg, init), "max_eval": cfg.data.max_eval,
        "upstream": sorted(r["key"] for r in upstream)})


def fewshot(cfg: SweepConfig, prep: dict, init: Init, group: str | None, shots: int, seed: int,
            upstream: list[dict], parent_id: str | None = None) -> dict:
    """Fine-tune from `init` on K examples per class; evaluate the final model on the validation split."""
    from mera.fewshot import start
    from mera.heads import name_labels
    from mera.models import ADAPTER, count_trainable, save_adapter
    from mera.train import TrainSettings, train

    target = prep["task"]
    f = cfg.fewshot
    unit = fewshot_unit(cfg, prep, init, group, shots, seed, upstream)
    settings = unit.params["fewshot"]

    def work(tmp: Path):
        spec = read_task(cfg.data_dir(), target)
        train_split = data.load_split(cfg.data_dir(), spec, "train")
        train_df = data.sample_k_shot(train_split, shots, seed, spec.num_labels)
        dev_df = data.sample_dev(train_split, shots, seed, spec.num_labels, f.dev_k or shots) \
            if init.kind == "best-source" else None
        rt = runtime(cfg)
        st = start(cfg, init, spec.num_labels, seed, upstream, train_df, dev_df)
        stats = train(st.model, st.tokenizer, train_df,
                      TrainSettings(f.epochs, f.batch_size, settings["lr"], cfg.model.max_length, seed,
                                    min_steps=f.min_steps, weight_decay=settings["weight_decay"],
                                    device=rt.device, bf16=rt.bf16),
                      extra_loss=st.extra_loss)
        n_eval, scores = validation_scores(cfg, spec, prep["hash"], st.model, st.tokenizer, rt)
        metrics = {**scores, **stats, "trainable_params": count_trainable(st.model)}
        st.model.to("cpu")
        name_labels(st.model, spec.label_names)
        if st.saves == "adapter":
            save_adapter(st.model, tmp / ADAPTER_SUBDIR, with_head=True)
        elif st.saves == "head":
            st.model.save_head(str(tmp / "head"), ADAPTER)
        sources = sorted({s for r in upstream for s in (r.get("sources") or [r["task"]])})
        manifest = {"target": target, "track": prep["track"], "init": init.name, "init_kind": init.kind,
                    "group": group, "shots": shots, "seed": seed, "n_train": len(train_df), "n_eval": n_eval,
                    "metrics": metrics, "sources": sources, "single_source": init.grouped and len(sources) == 1,
                    "weights_kept": st.saves, "runtime": rt.describe(), **st.info}
        return manifest, metrics

    tags = {"target": target, "init": init.name, "group": group or "-", "shots": shots, "seed": seed}
    return _run_unit(cfg, unit, parent_id, tags, work)


# ---- mergeeval (multi-task merging, no fine-tuning) ---------------------------------------

MERGEEVAL_VERSION = 1  # bump when what a merge-eval measures changes: it enters its key


def pretrain_kinds(cfg: SweepConfig) -> list[str]:
    """The adapter kinds the sweep pretrains: model.adapter for the fine-tunes, plus the
    multitask study's kinds."""
    kinds = [cfg.model.adapter] if cfg.fewshot.targets else []
    return kinds + [k for k in (cfg.multitask.kinds if cfg.multitask else []) if k not in kinds]


def pretrain_config(cfg: SweepConfig, kind: str) -> SweepConfig:
    """The config a kind's adapters are pretrained under (the sweep's own for model.adapter)."""
    return cfg if kind == cfg.model.adapter and cfg.fewshot.targets else cfg.kind_config(kind)


def mergeeval_grid(cfg: SweepConfig) -> list[dict]:
    """Every merge-eval of the multitask study: kind x method x (N, draw); a method that
    cannot merge a kind is listed with the reason (`not_applicable`) and never run."""
    from mera.multitask import groups, not_applicable

    mt = cfg.multitask
    if mt is None:
        return []
    return [{"kind": kind, "method": method, "n": n, "draw": d, "members": members,
             "not_applicable": not_applicable(kind, method)}
            for kind in mt.kinds for method in mt.methods
            for n, d, members in groups(cfg.pretrain.tasks, mt.sizes, mt.draws, mt.seed)]


def mergeeval_unit(cfg: SweepConfig, kind: str, method: str, n: int, draw: int, members: list[str],
                   pool: list[dict]) -> Unit:
    from mera.merge import get_method

    mt = cfg.multitask
    by_task = {r["task"]: r["key"] for r in pool}
    return Unit("mergeeval", f"{kind}.{method}.n{n}.d{draw}", {
        "kind": kind, "model": cfg.kind_config(kind).model.identity(), "method": method,
        "method_version": get_method(method).version, "merge_params": cfg.merge.params.get(method, {}),
        "n": n, "draw": draw, "members": sorted(members), "pool": sorted(by_task.values()),
        "heldout": mt.model_dump(include={"heldout_shots", "heldout_seeds", "head_steps", "head_lr",
                                          "head_batch_size"}),
        "max_eval": cfg.data.max_eval, "version": MERGEEVAL_VERSION})


def mergeeval(cfg: SweepConfig, kind: str, method: str, n: int, draw: int, members: list[str], pool: list[dict],
              parent_id: str | None = None) -> dict:
    """Merge the group's adapters of one kind and evaluate the merged model, without
    fine-tuning, on every task of the pool: the group's with their own heads, the others with
    a K-shot head over the frozen merged model (mera.multitask)."""
    from mera import multitask as mtl

    mt = cfg.multitask
    params = dict(cfg.merge.params.get(method, {}))
    unit = mergeeval_unit(cfg, kind, method, n, draw, members, pool)
    kcfg = cfg.kind_config(kind)
    by_task = {r["task"]: r for r in pool}
    heads = mtl.HeadSettings(mt.head_steps, mt.head_lr, mt.head_batch_size)

    def work(tmp: Path):
        import torch

        from mera.evaluate import features
        from mera.tokens import encode

        group = [by_task[t] for t in sorted(members)]
        # ot-acts calibrates on the group's own inputs (there is no target; `calib: target` = its first task)
        meta, merged, diag, _ = merge_members(kcfg, group[0]["task"], method, params, group)
        keep = kind not in mtl.DELTA_KINDS  # the merged adapter is small and loadable; a delta is rebuilt
        model, tok = mtl.merged_model(kcfg.model, meta, merged, tmp / ADAPTER_SUBDIR)
        del merged
        rt = runtime(cfg)
        rows = []
        for task, r in sorted(by_task.items()):
            spec = read_task(cfg.data_dir(), task)
            val = data.cap(data.load_split(cfg.data_dir(), spec, "validation"), cfg.data.max_eval, EVAL_SEED)
            labels = torch.tensor(val["label"].to_numpy(), dtype=torch.long)
            feats = features(model, tok, eval_tokens(kcfg, spec, tok, val, r["params"]["data"]), rt.eval_batch_size,
                             device=rt.device, bf16=rt.bf16)
            own = r["metrics"]["accuracy"]
            if task in members:
                head = mtl.load_head(model, mtl.head_dir(Path(r["path"]) / ADAPTER_SUBDIR, kind), f"own-{task}")
                accs = [mtl.accuracy(mtl.head_logits(head.to("cpu"), feats), labels)]
            else:
                train_split = data.load_split(cfg.data_dir(), spec, "train")
                accs = []
                for seed in mt.heldout_seeds:
                    shots = data.sample_k_shot(train_split, mt.heldout_shots, seed, spec.num_labels)
                    fk = features(model, tok, encode(tok, shots, cfg.model.max_length), rt.eval_batch_size,
                                  device=rt.device, bf16=rt.bf16)
                    head = mtl.fresh_head(model, f"k-{task}-{seed}", spec.num_labels, seed).to("cpu")
                    mtl.train_head(head, fk, torch.tensor(shots["label"].to_numpy(), dtype=torch.long), heads, seed)
                    accs.append(mtl.accuracy(mtl.head_logits(head, feats), labels))
            acc = sum(accs) / len(accs)
            rows.append({"task": task, "track": r["track"], "split": "in" if task in members else "held",
                         "accuracy": acc, "per_seed": accs, "own_accuracy": own,
                         "normalised": acc / own if own > 0 else float("nan"), "n_eval": len(val)})
        (tmp / "diagnostics.json").write_text(json.dumps(diag, indent=1, default=str))
        summary = mtl.summarise(rows)
        manifest = {"kind": kind, "method": method, "n": n, "draw": draw, "members": sorted(members), "rows": rows,
                    "summary": summary, "weights_kept": "adapter" if keep else "none (a delta: re-merge to rebuild)",
                    "runtime": rt.describe()}
        return manifest, summary

    tags = {"kind": kind, "method": method, "n": n, "draw": draw}
    return _run_unit(cfg, unit, parent_id, tags, work)


def upstream_of(cfg: SweepConfig, init: Init, target: str, group: str | None, tracks: dict[str, str],
                adapters: dict[str, dict], merges: dict) -> list[dict] | None:
    """The results an init starts from; None when the cell does not exist (empty group, or
    the target's own adapter, which would leak)."""
    if init.kind in ("merge", "frozen"):
        if (target, group, init.method) not in merges:
            return None
        return [merges[(target, group, init.method)]]
    if init.kind == "adapter-from":
        return None if init.arg == target else [adapters.get(init.arg)]
    if init.kind in ("best-source", "fusion"):
        members = group_members(target, group, tracks, cfg.pretrain.tasks)
        return [adapters.get(m) for m in members] or None
    return []


def fewshot_grid(cfg: SweepConfig, tracks: dict[str, str], adapters: dict[str, dict], merges: dict) -> list[dict]:
    """Every fine-tune of the sweep: target x init (x group for grouped inits) x shots x seed,
    each with the upstream results it starts from."""
    grid = []
    for target in cfg.fewshot.targets:
        for init in cfg.inits():
            for group in cfg.groups_of(init):
                upstream = upstream_of(cfg, init, target, group, tracks, adapters, merges)
                if upstream is None:
                    continue
                for shots in cfg.fewshot.shots:
                    for seed in cfg.fewshot.seeds:
                        grid.append({"target": target, "init": init, "group": group, "shots": shots, "seed": seed,
                                     "upstream": upstream})
    return grid


def _known_track(cfg: SweepConfig, name: str) -> str | None:
    """A task's track before it is prepared: from its meta.json in the data source, or the hub
    registry (so a fresh project's plan lists its merges and fine-tunes)."""
    from mera.tasks import HUB_TASKS, TaskError

    source = cfg.data.source
    if source != "hub" and (Path(source).expanduser() / name / "meta.json").is_file():
        try:
            return read_task(Path(source).expanduser(), name).track
        except TaskError:
            return None
    return HUB_TASKS[name].track if name in HUB_TASKS else None


def walk(cfg: SweepConfig) -> dict[str, dict[str, list]]:
    """The sweep's DAG through manifests alone, nothing run: per stage the finished units'
    results ("done"), the names of the units not finished ("missing"; a unit whose upstream
    is missing is missing too), and of those the ones whose last attempt failed ("failed")."""
    out: dict[str, dict[str, list]] = {s: {"done": [], "missing": [], "failed": []} for s in STAGES[:-1]}
    out["fewshot"]["todo"] = []  # the missing fine-tunes' cells, for the report to mark

    def check(stage: str, name: str, unit: Unit | None, cell: dict | None = None) -> dict | None:
        m = unit.done(cfg) if unit is not None else None
        if m is None:
            out[stage]["missing"].append(name)
            if cell is not None:
                out[stage]["todo"].append(cell)
            if unit is not None and (f := unit.failure(cfg)):
                out[stage]["failed"].append(f)
            return None
        out[stage]["done"].append(_result(unit, cfg, m))
        return out[stage]["done"][-1]

    names = sorted(set(cfg.pretrain.tasks) | set(cfg.fewshot.targets))
    present = {n for n in names if (cfg.data_dir() / n / "meta.json").is_file()}
    preps = {n: check("prepare", n, prepare_unit(cfg, n) if n in present else None) for n in names}
    by_kind = {}
    for kind in pretrain_kinds(cfg):
        kcfg = pretrain_config(cfg, kind)
        by_kind[kind] = {s: check("pretrain", adapter_name(s, kind),
                                  pretrain_unit(kcfg, preps[s]) if preps[s] else None) for s in cfg.pretrain.tasks}
    adapters = by_kind.get(cfg.model.adapter, {})
    for g in mergeeval_grid(cfg):
        if g["not_applicable"]:
            continue
        pool = [by_kind[g["kind"]][s] for s in cfg.pretrain.tasks]
        unit = mergeeval_unit(cfg, g["kind"], g["method"], g["n"], g["draw"], g["members"], pool) \
            if None not in pool else None
        check("mergeeval", f"{g['kind']}.{g['method']}.n{g['n']}.d{g['draw']}", unit)
    tracks = {n: p["track"] if p else _known_track(cfg, n) for n, p in preps.items()}
    if None in tracks.values():  # a task nobody describes yet: later stages cannot even be listed
        return out
    merges = {}
    for target, group, method, members in merge_grid(cfg, tracks):
        ups = [adapters[m] for m in members]
        unit = merge_unit(cfg, target, group, method, ups) if None not in ups else None
        merges[(target, group, method)] = check("merge", f"{target}.{group}.{method}", unit)
    for u in fewshot_grid(cfg, tracks, adapters, merges):
        name = f"{u['target']}.{u['init'].name}.{u['group']}.k{u['shots']}.s{u['seed']}"
        ok = preps[u["target"]] is not None and None not in u["upstream"]
        unit = fewshot_unit(cfg, preps[u["target"]], u["init"], u["group"], u["shots"], u["seed"], u["upstream"]) \
            if ok else None
        check("fewshot", name, unit, {"target": u["target"], "init": u["init"].name, "group": u["group"],
                                      "shots": u["shots"], "seed": u["seed"]})
    return out


def finished_sweep(cfg: SweepConfig, until: str = "report") -> dict | None:
    """The results of every unit up to `until` when all are done (and, for "report", the
    report lists exactly these fine-tunes), else None. Lets a re-run of a finished sweep
    return at once, without starting the orchestrator."""
    from mera.report import report_keys

    stages = STAGES[: STAGES.index(until) + 1]
    state = walk(cfg)
    if any(state[s]["missing"] for s in stages if s in state):
        return None
    reported = state["fewshot"]["done"] + state["mergeeval"]["done"]
    if until == "report" and report_keys(cfg) != sorted(r["key"] for r in reported):
        return None
    return {s: state[s]["done"] for s in stages if s in state}
