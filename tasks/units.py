"""Each stage's unit as a Prefect task.

The cache key is the unit's manifest key, and only while its manifest exists: a deleted
or half-written artifact re-runs instead of returning a stale path. Results are small
JSON dicts (paths, keys, metrics), never models, so caching and cluster workers stay cheap.
"""

from __future__ import annotations

import os
from pathlib import Path

from prefect import task

from mera import stages
from mera.config import SweepConfig
from mera.plan import Node


def _cfg(config: dict) -> SweepConfig:
    threads = os.environ.get("MERA_TORCH_THREADS")
    if threads:  # a worker process of the process runner: workers x threads = cores
        from mera.train import set_threads

        set_threads(int(threads))
    return SweepConfig.model_validate(config)


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


def _manifest_key(_ctx, params: dict) -> str:
    """Cache key = the unit's manifest key. The first run stores its result under it, so the
    next run is a cache hit; if the manifest has gone since (deleted, or a killed run), the
    stored result is dropped first, so the unit re-runs instead of returning a stale path."""
    cfg = _cfg(params["config"])
    unit = stages.unit(cfg, Node(params["stage"], params["name"], params["args"]), params["upstream"])
    key = f"{unit.stage}-{unit.key}"
    if unit.done(cfg) is None and (stale := _stale_record(key)) is not None:
        stale.unlink(missing_ok=True)
    return key


def _transient(_task, _run, state) -> bool:
    """Retry a unit only for transient failures: never for a user's mistake (config, data,
    adapter, merge parameters), which would fail the same way again."""
    from mera.preflight import user_errors

    exc = getattr(state, "data", None)
    return not isinstance(exc, user_errors())


@task(name="import-data", retries=1, retry_delay_seconds=5)
def import_data(config: dict) -> list[str]:
    from mera.stages.prepare import import_data as bring

    return bring(_cfg(config))


# a unit is retried twice on a transient failure (a worker lost, a store briefly locked, ...)
@task(task_run_name="{stage}/{name}", cache_key_fn=_manifest_key, persist_result=True, result_serializer="json",
      retries=2, retry_delay_seconds=2, retry_condition_fn=_transient)
def unit(config: dict, stage: str, name: str, args: dict, upstream: list[dict], parent_id: str | None = None) -> dict:
    """One unit of the plan (mera.plan.Node), run by its stage's recipe (mera.stages)."""
    return stages.run(_cfg(config), Node(stage, name, args), upstream, parent_id)


UNITS = {stage: unit.with_options(name=stage) for stage in stages.RECIPES}  # one Prefect task name per stage


@task(name="report")
def report(config: dict, results: list[dict], timings: dict, merges: list[dict] | None = None,
           failures: list[dict] | None = None, mergeevals: list[dict] | None = None) -> str:
    from mera.report import write_report

    return str(write_report(_cfg(config), results, timings, merges, failures, mergeevals))
