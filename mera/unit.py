"""The unit runtime: a unit of the plan keyed by its content, skipped when its manifest exists,
written atomically, its attempts counted and recorded as one MLflow child run of the sweep.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

from mera import artifacts
from mera.config import ConfigError, SweepConfig
from mera.tracking import Tracker, flatten

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

    def check(self, cfg: SweepConfig) -> tuple[dict | None, str | None]:
        """(its manifest when done, why a unit that finished once no longer is): artifacts.check."""
        return artifacts.check(self.path(cfg))

    def failure_path(self, cfg: SweepConfig) -> Path:
        path = self.path(cfg)
        return path.parent / ".failed" / f"{path.name}.json"

    def failure(self, cfg: SweepConfig) -> dict | None:
        """The last attempt's error when the unit failed and has not finished since."""
        f = self.failure_path(cfg)
        return json.loads(f.read_text()) if f.is_file() else None

    def attempts_path(self, cfg: SweepConfig) -> Path:
        """How many MLflow runs the unit has had and the last one's id (`run_unit`)."""
        path = self.path(cfg)
        return path.parent / ".attempts" / f"{path.name}.json"


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


def result(unit: Unit, cfg: SweepConfig, manifest: dict) -> dict:
    return {**manifest, "key": unit.key, "path": str(unit.path(cfg)), "content": content(manifest)}


def content(manifest: dict) -> str:
    """A short hash of every file a unit wrote, from the hashes its manifest recorded."""
    return hashlib.sha256(json.dumps(manifest.get("files", {}), sort_keys=True).encode()).hexdigest()[:16]


def lineage(results: list[dict]) -> list[str]:
    """Upstream results as `<key>:<content>`, sorted, for a unit's key: an upstream unit redone
    with other content (its files lost and retrained differently) gives its downstream units
    new keys, so they are redone too; redone with the same content, they stay valid."""
    return sorted(f"{r['key']}:{r['content']}" for r in results)


FAULT_ENV = "MERA_FAULT"  # "<unit name prefix>:<attempts>[:config]", comma-separated: fail those attempts (tests)
_faults: dict[str, int] = {}


def _injected_fault(unit: Unit) -> None:
    """Fail the first attempts of a unit on purpose when MERA_FAULT names it: a transient
    error (retried) by default, or a config error (never retried)."""
    for spec in filter(None, os.environ.get(FAULT_ENV, "").split(",")):
        prefix, times, kind = (spec.split(":") + ["1", "transient"])[:3]
        if not unit.readable.startswith(prefix) or _faults.get(unit.key, 0) >= int(times):
            continue
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


def run_unit(cfg: SweepConfig, unit: Unit, parent_id: str | None, tags: dict, work, logged: bool = True) -> dict:
    """Skip a finished unit; else run `work(tmp_dir) -> (manifest, metrics)` atomically and
    record it as an MLflow child run of the sweep (unless `logged` is False)."""
    done = unit.done(cfg)
    if done is not None:
        return result(unit, cfg, done)
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
                manifest = artifacts.write_manifest(tmp, manifest)  # with its files' hashes: its content
                if run is not None:  # logged before the manifest becomes visible: a finished unit's run is complete
                    run.metrics({**metrics, "seconds": manifest["seconds"]})
                    run.artifacts(tmp)  # the adapter (adapters-library format), manifest and diagnostics
                    if manifest.get("inputs"):
                        run.datasets(manifest["inputs"], cfg.data_dir())
                    adapter = tmp / artifacts.ADAPTER_SUBDIR
                    if (adapter / "adapter_config.json").is_file():  # an adapter, not a delta or a head alone
                        run.model(adapter, cfg.model.max_length, {"mera.key": unit.key, **tags})
    except Exception as exc:  # remembered for `mera status`; the exception goes on to the orchestrator
        failure.parent.mkdir(parents=True, exist_ok=True)
        failure.write_text(json.dumps({"unit": unit.readable, "key": unit.key, "error": f"{type(exc).__name__}: {exc}",
                                       "at": time.strftime("%Y-%m-%d %H:%M:%S")}))
        raise
    failure.unlink(missing_ok=True)
    return result(unit, cfg, manifest)
