"""The benchmark flow: the plan's units (mera.plan) stage by stage, prepare -> pretrain ->
merge -> fewshot -> mergeeval, each unit a Prefect task; then the report.

Run it with `mera run --config configs/smoke.yaml`; running it again is a resume: finished
units are cache hits, only what is missing runs.
"""

from __future__ import annotations

import gc
import os
import time
from contextlib import nullcontext
from pathlib import Path

from prefect import flow
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

import tasks.units as t
from flows import env, server
from mera import plan
from mera.config import ConfigError, SweepConfig
from mera.tracking import flatten
from mera.unit import settle_dead_runs, sweep_key, tracker


def _gather(jobs: dict) -> dict:
    """key -> the unit's result, or {"failed": "<error>"} for a unit that failed after its
    retries: one failed unit does not stop the sweep."""
    out = {}
    for key, future in jobs.items():
        value = future.result(raise_on_failure=False)
        out[key] = {"failed": f"{type(value).__name__}: {value}"} if isinstance(value, BaseException) else value
    return out


def _blocked(upstream: list[dict]) -> dict | None:
    """A failure record for a unit whose upstream failed (it is not submitted)."""
    bad = next((u for u in upstream if u.get("failed")), None)
    return None if bad is None else {"failed": f"upstream failed: {bad['failed']}"}


@flow(name="benchmark", log_prints=True)
def benchmark(config: dict, until: str = "report") -> dict:
    cfg = SweepConfig.model_validate(config)
    timings: dict[str, float] = {}
    track = tracker(cfg)
    parent = track.sweep_run(sweep_key(cfg), cfg.name, flatten(cfg.model_dump()))
    settle_dead_runs(cfg)  # attempts a kill cut short (this run holds the sweep lock)
    out: dict = {"parent_run_id": parent, "flow_run_id": str(flow_run.id), "failed": []}
    try:
        t.import_data(config)
        nodes = plan.build(cfg)  # the tasks' tracks from their meta.json, imported now
        results: dict[str, dict] = {}
        for stage in plan.stages_until(until)[:-1]:
            todo = [n for n in nodes if n.stage == stage]
            if not todo:
                continue
            clock, jobs = time.perf_counter(), {}
            for n in todo:
                ups = [results[u] for u in n.upstream]
                if blocked := _blocked(ups):
                    results[n.id] = blocked
                else:
                    jobs[n.id] = t.UNITS[stage].submit(config, stage, n.name, n.args, ups, parent)
            results.update(_gather(jobs))
            timings[stage] = time.perf_counter() - clock
            out["failed"] += [{"stage": stage, "unit": n.name, "failed": results[n.id]["failed"]}
                              for n in todo if results[n.id].get("failed")]
        by_stage = {s: [(n, results[n.id]) for n in nodes if n.stage == s and n.id in results] for s in plan.STAGES}
        fewshots = [r for _, r in by_stage["fewshot"] if not r.get("failed")]
        failures = [{**n.args, "error": r["failed"]} for n, r in by_stage["fewshot"] if r.get("failed")]
        evals = [{**n.args, **r} if r.get("failed") else r for n, r in by_stage["mergeeval"]]
        out.update(results=fewshots, mergeeval=evals)
        if until == "report":
            merges = [r for _, r in by_stage["merge"] if not r.get("failed")]
            out["report"] = t.report(config, fewshots, timings, merges, failures, evals)
            track.log_dir(parent, Path(out["report"]).parent, "report")  # browsable beside the sweep's runs
            from mera.report import summary_metrics

            track.metrics(parent, summary_metrics(fewshots))  # the sweep's run shows its headline numbers
        out["timings"] = timings
        track.link_units(parent, {n.id: r["mlflow_run_id"] for n in nodes
                                  if (r := results.get(n.id)) and r.get("mlflow_run_id")})
    except BaseException as exc:
        track.end(parent, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    track.tag(parent, "mera.failed_units", str(len(out["failed"])))
    track.end(parent, "FINISHED")
    return out


def run(cfg: SweepConfig, until: str = "report", api: server.ApiServer | None = None) -> dict:
    """Run the flow with the configured task runner (threads by default) on the run's own
    Prefect API server (`api` if spawned already; flows.server) unless the user points at one."""
    workers = cfg.run.workers
    env.preload()
    gc.freeze()  # the libraries' objects, now imported, out of the collector's full walks (BENCHMARKS.md)
    from mera.train import set_threads

    threads = cfg.run.torch_threads or max(1, (os.cpu_count() or 1) // workers)
    set_threads(threads)  # only when it differs: see mera.train.set_threads
    os.environ["MERA_TORCH_THREADS"] = str(threads)  # read by each worker process (tasks.units)
    if cfg.run.runner == "process":
        from prefect.task_runners import ProcessPoolTaskRunner

        runner = ProcessPoolTaskRunner(max_workers=workers, initializer=t.worker_init)
    elif cfg.run.runner == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError:
            raise ConfigError("run.runner 'dask' needs prefect-dask: pip install -c constraints.txt -e '.[dask]'") \
                from None
        runner = DaskTaskRunner(address=cfg.run.address) if cfg.run.address else DaskTaskRunner(
            cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                            "dashboard_address": None})
    else:
        runner = ThreadPoolTaskRunner(max_workers=workers)
    from prefect.settings import temporary_settings

    own = (server.ready(api) if api is not None else server.start()) is not None
    if own:
        server.prune_flow_runs()
    # flow-run heartbeats tell a long-lived server that a run is alive; the run's own server
    # lives and dies with the run
    quiet = temporary_settings(updates={"flows.heartbeat_frequency": None}) if own else nullcontext()
    with quiet:
        return benchmark.with_options(task_runner=runner, name=f"benchmark-{cfg.name}")(cfg.model_dump(), until)
