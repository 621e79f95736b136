"""The benchmark flow: prepare -> pretrain (per source) -> merge (per target x group x method)
-> fewshot (per target x init x shots x seed) -> report.

Run it with `mera run --config configs/smoke.yaml`; running it again is a resume: finished
units are cache hits, only what is missing runs.
"""

from __future__ import annotations

import os
import time
from contextlib import nullcontext
from pathlib import Path

from prefect import flow
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import quote

import tasks.units as t
from flows import env
from mera import units
from mera.config import ConfigError, SweepConfig
from mera.tracking import flatten


def _gather(jobs: dict) -> dict:
    """key -> the unit's result, or {"failed": "<error>"} for a unit that failed after its
    retries: one failed unit does not stop the sweep."""
    out = {}
    for key, future in jobs.items():
        value = future.result(raise_on_failure=False)
        out[key] = {"failed": f"{type(value).__name__}: {value}"} if isinstance(value, BaseException) else value
    return out


def _quoting(runner: str):
    """A unit's arguments are plain data (the config, earlier results), never futures. With
    the thread runner they are quoted, so Prefect does not walk them looking for futures
    (every node of the config, several times a task: 300 no-op tasks 3.5-3.7 -> 2.8 ms a
    task); the tasks receive them unwrapped. Prefect's process and Dask runners hand a
    quoted argument to the task as a tuple, not unwrapped: there they go as they are."""
    return quote if runner == "thread" else (lambda value: value)


def _blocked(upstream: list[dict]) -> dict | None:
    """A failure record for a unit whose upstream failed (it is not submitted)."""
    bad = next((u for u in upstream if u.get("failed")), None)
    return None if bad is None else {"failed": f"upstream failed: {bad['failed']}"}


@flow(name="benchmark", log_prints=True)
def benchmark(config: dict, until: str = "report") -> dict:
    env.imports_done()  # MLflow, imported while the flow started (flows.env.WarmUp); then the heap is frozen
    cfg = SweepConfig.model_validate(config, context={"shallow": True})  # checked in full by the caller
    stop = units.STAGES.index(until)
    timings: dict[str, float] = {}
    track = units.tracker(cfg)
    parent = track.sweep_run(units.sweep_key(cfg), cfg.name, flatten(cfg.model_dump()))
    units.settle_dead_runs(cfg)  # attempts a kill cut short (this run holds the sweep lock)
    out: dict = {"parent_run_id": parent, "flow_run_id": str(flow_run.id), "failed": []}
    q = _quoting(cfg.run.runner)
    try:
        clock = time.perf_counter()
        t.import_data(q(config))
        names = sorted(set(cfg.pretrain.tasks) | set(cfg.fewshot.targets))
        preps = dict(zip(names, [f.result() for f in [t.prepare.submit(q(config), n, parent) for n in names]]))
        timings["prepare"] = time.perf_counter() - clock
        tracks = {n: p["track"] for n, p in preps.items()}
        if stop >= 1:
            clock = time.perf_counter()
            kind_configs = {k: units.pretrain_config(cfg, k).model_dump() for k in units.pretrain_kinds(cfg)}
            by_kind = _gather({(k, s): t.pretrain.submit(q(kc), q(preps[s]), parent)
                               for k, kc in kind_configs.items() for s in cfg.pretrain.tasks})
            timings["pretrain"] = time.perf_counter() - clock
            out["failed"] += [{"stage": "pretrain", "unit": units.adapter_name(s, k), **r}
                              for (k, s), r in by_kind.items() if r.get("failed")]
            adapters = {s: r for (k, s), r in by_kind.items() if k == cfg.model.adapter}
        merges, results, failures = {}, [], []
        if stop >= 2 and cfg.fewshot.targets:
            clock = time.perf_counter()
            jobs, merges = {}, {}
            for target, group, method, members in units.merge_grid(cfg, tracks):
                ups = [adapters[m] for m in members]
                if blocked := _blocked(ups):
                    merges[(target, group, method)] = blocked
                else:
                    jobs[(target, group, method)] = t.merge.submit(q(config), target, group, method, q(ups), parent)
            merges.update(_gather(jobs))
            timings["merge"] = time.perf_counter() - clock
            out["failed"] += [{"stage": "merge", "unit": ".".join(k), **r}
                              for k, r in merges.items() if r.get("failed")]
        if stop >= 3 and cfg.fewshot.targets:
            clock = time.perf_counter()
            grid = units.fewshot_grid(cfg, tracks, adapters, merges)
            jobs, done = {}, {}
            for i, u in enumerate(grid):
                if blocked := _blocked(u["upstream"]):
                    done[i] = blocked
                else:
                    jobs[i] = t.fewshot.submit(q(config), q(preps[u["target"]]), u["init"].name, u["group"],
                                               u["shots"], u["seed"], q(u["upstream"]), parent)
            done.update(_gather(jobs))
            timings["fewshot"] = time.perf_counter() - clock
            results = [done[i] for i in range(len(grid)) if not done[i].get("failed")]
            failures = [{"target": u["target"], "init": u["init"].name, "group": u["group"], "shots": u["shots"],
                         "seed": u["seed"], "error": done[i]["failed"]}
                        for i, u in enumerate(grid) if done[i].get("failed")]
            out["results"] = results
            out["failed"] += [{"stage": "fewshot", "unit": f"{f['target']}.{f['init']}.{f['group']}.k{f['shots']}"
                                                            f".s{f['seed']}", "failed": f["error"]} for f in failures]
        if stop >= 4 and cfg.multitask is not None:
            clock = time.perf_counter()
            jobs, evals = {}, {}
            grid = units.mergeeval_grid(cfg)
            for i, g in enumerate(grid):
                if g["not_applicable"]:  # listed as n/a by the report
                    continue
                pool = [by_kind[(g["kind"], s)] for s in cfg.pretrain.tasks]
                if blocked := _blocked(pool):
                    evals[i] = {**g, **blocked}
                else:
                    jobs[i] = t.mergeeval.submit(q(config), g["kind"], g["method"], g["n"], g["draw"],
                                                 q(g["members"]), q(pool), parent)
            evals.update({i: {**grid[i], **r} if r.get("failed") else r for i, r in _gather(jobs).items()})
            timings["mergeeval"] = time.perf_counter() - clock
            out["mergeeval"] = [evals[i] for i in sorted(evals)]
            out["failed"] += [{"stage": "mergeeval", "unit": f"{e['kind']}.{e['method']}.n{e['n']}.d{e['draw']}",
                               "failed": e["failed"]} for e in out["mergeeval"] if e.get("failed")]
        if stop >= 5:
            ok_merges = [m for m in merges.values() if not m.get("failed")]
            out["report"] = t.report(q(config), q(results), q(timings), q(ok_merges), q(failures),
                                     q(out.get("mergeeval")))
            track.log_dir(parent, Path(out["report"]).parent, "report")  # browsable beside the sweep's runs
            from mera.report import summary_metrics

            track.metrics(parent, summary_metrics(results))  # the sweep's run shows its headline numbers
        out["timings"] = timings
    except BaseException as exc:
        track.end(parent, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    track.tag(parent, "mera.failed_units", str(len(out["failed"])))
    track.end(parent, "FINISHED")
    return out


def run(cfg: SweepConfig, until: str = "report", before=None) -> dict:
    """Run the flow with the configured task runner (threads by default); `before()` is
    called once the libraries are imported, just before the flow starts."""
    workers = cfg.run.workers
    env.preload()
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
    if before is not None:
        before()
    import prefect.flow_engine  # noqa: F401  (imported by the flow's start otherwise)
    import prefect.task_engine  # noqa: F401
    from prefect.settings import temporary_settings

    # flow-run heartbeats tell a long-lived server that a run is alive; the server `mera run`
    # starts lives and dies with the run, and stopping the heartbeat thread holds the flow's
    # end for up to 1 s (it sleeps in 1 s steps)
    quiet = temporary_settings(updates={"flows.heartbeat_frequency": None}) if env.own_server() else nullcontext()
    with quiet:
        return benchmark.with_options(task_runner=runner, name=f"benchmark-{cfg.name}")(cfg.model_dump(), until)
