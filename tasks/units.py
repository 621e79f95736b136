"""Each stage's unit as a Prefect task.

The cache key is the unit's manifest key, and only while its manifest exists: a deleted
or half-written artifact re-runs instead of returning a stale path. Results are small
JSON dicts (paths, keys, metrics), never models, so caching and cluster workers stay cheap.
"""

from __future__ import annotations

import os
from pathlib import Path

from prefect import task

from mera import units
from mera.config import SweepConfig


def _cfg(config: dict) -> SweepConfig:
    threads = os.environ.get("MERA_TORCH_THREADS")
    if threads:  # a worker process of the process runner: workers x threads = cores
        from mera.train import set_threads

        set_threads(int(threads))
    return SweepConfig.model_validate(config, context={"shallow": True})  # checked in full by the CLI


def worker_init() -> None:
    """A process-runner worker leaves Ctrl-C to the run: the terminal signals the whole process
    group, and a worker interrupted mid-unit left the pool unable to shut down (the run hung at
    exit). The run stops handing out units and ends once the running ones have finished."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _stale_record(key: str) -> Path | None:
    from prefect.settings import PREFECT_RESULTS_LOCAL_STORAGE_PATH

    path = Path(PREFECT_RESULTS_LOCAL_STORAGE_PATH.value()) / key
    return path if path.is_file() else None


def _manifest_key(builder):
    """Cache key = the unit's manifest key. The first run stores its result under it, so the
    next run is a cache hit; if the manifest has gone since (deleted, or a killed run), the
    stored result is dropped first, so the unit re-runs instead of returning a stale path."""

    def cache_key(_ctx, params: dict) -> str:
        args = {k: v for k, v in params.items() if k not in ("config", "parent_id")}
        cfg = _cfg(params["config"])
        unit = builder(cfg, **args)
        key = f"{unit.stage}-{unit.key}"
        if unit.done(cfg) is None and (stale := _stale_record(key)) is not None:
            stale.unlink(missing_ok=True)
        return key

    return cache_key


def _transient(_task, _run, state) -> bool:
    """Retry a unit only for transient failures: never for a user's mistake (config, data,
    adapter, merge parameters), which would fail the same way again."""
    from mera.preflight import user_errors

    exc = getattr(state, "data", None)
    return not isinstance(exc, user_errors())


# a unit is retried twice on a transient failure (a worker lost, a store briefly locked, ...)
_COMMON = dict(persist_result=True, result_serializer="json", retries=2, retry_delay_seconds=2,
               retry_condition_fn=_transient)


@task(name="import-data", retries=1, retry_delay_seconds=5)
def import_data(config: dict) -> list[str]:
    return units.import_data(_cfg(config))


@task(name="prepare", task_run_name="prepare-{task}", cache_key_fn=_manifest_key(units.prepare_unit), **_COMMON)
def prepare(config: dict, task: str, parent_id: str | None = None) -> dict:
    return units.prepare(_cfg(config), task, parent_id)


@task(name="pretrain", task_run_name="pretrain-{prep[task]}",
      cache_key_fn=_manifest_key(units.pretrain_unit), **_COMMON)
def pretrain(config: dict, prep: dict, parent_id: str | None = None) -> dict:
    return units.pretrain(_cfg(config), prep, parent_id)


@task(name="merge", task_run_name="merge-{target}-{group}-{method}",
      cache_key_fn=_manifest_key(units.merge_unit), **_COMMON)
def merge(config: dict, target: str, group: str, method: str, members: list[dict],
          parent_id: str | None = None) -> dict:
    return units.merge(_cfg(config), target, group, method, members, parent_id)


def _fewshot_unit(cfg: SweepConfig, prep: dict, init: str, **kw) -> units.Unit:
    return units.fewshot_unit(cfg, prep, cfg.init(init), **kw)


@task(name="fewshot", task_run_name="fewshot-{prep[task]}-{init}-{group}-k{shots}-s{seed}",
      cache_key_fn=_manifest_key(_fewshot_unit), **_COMMON)
def fewshot(config: dict, prep: dict, init: str, group: str | None, shots: int, seed: int,
            upstream: list[dict], parent_id: str | None = None) -> dict:
    cfg = _cfg(config)
    return units.fewshot(cfg, prep, cfg.init(init), group, shots, seed, upstream, parent_id)


@task(name="mergeeval", task_run_name="mergeeval-{kind}-{method}-n{n}-d{draw}",
      cache_key_fn=_manifest_key(units.mergeeval_unit), **_COMMON)
def mergeeval(config: dict, kind: str, method: str, n: int, draw: int, members: list[str], pool: list[dict],
              parent_id: str | None = None) -> dict:
    return units.mergeeval(_cfg(config), kind, method, n, draw, members, pool, parent_id)


@task(name="report")
def report(config: dict, results: list[dict], timings: dict, merges: list[dict] | None = None,
           failures: list[dict] | None = None, mergeevals: list[dict] | None = None) -> str:
    from mera.report import write_report

    return str(write_report(_cfg(config), results, timings, merges, failures, mergeevals))
