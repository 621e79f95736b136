"""The benchmark flow: prepare -> pretrain (per source) -> merge (per target x group x method)
-> fewshot (per target x init x shots x seed) -> report.

Run it with `mera run --config configs/smoke.yaml`; running it again is a resume: finished
units are cache hits, only what is missing runs.
"""

from __future__ import annotations

import os
import time

from prefect import flow
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

import tasks.units as t
from mera import units
from mera.config import FRESH_INIT, SweepConfig
from mera.tracking import flatten


def _wait(futures):
    return [f.result() for f in futures]


@flow(name="benchmark", log_prints=True)
def benchmark(config: dict, until: str = "report") -> dict:
    cfg = SweepConfig.model_validate(config)
    stop = units.STAGES.index(until)
    timings: dict[str, float] = {}
    track = units.tracker(cfg)
    parent = track.sweep_run(units.sweep_key(cfg), cfg.name, flatten(cfg.model_dump()))
    out: dict = {"parent_run_id": parent, "flow_run_id": str(flow_run.id)}
    try:
        clock = time.perf_counter()
        t.import_data(config)
        names = sorted(set(cfg.pretrain.tasks) | set(cfg.fewshot.targets))
        preps = dict(zip(names, _wait([t.prepare.submit(config, n, parent) for n in names])))
        timings["prepare"] = time.perf_counter() - clock
        if stop >= 1:
            clock = time.perf_counter()
            sources = cfg.pretrain.tasks
            adapters = dict(zip(sources, _wait([t.pretrain.submit(config, preps[s], parent) for s in sources])))
            timings["pretrain"] = time.perf_counter() - clock
        if stop >= 2:
            clock = time.perf_counter()
            tracks = {n: p["track"] for n, p in preps.items()}
            jobs = {(target, group, method): t.merge.submit(config, target, group, method,
                                                            [adapters[m] for m in members], parent)
                    for target, group, method, members in units.merge_grid(cfg, tracks)}
            merges = dict(zip(jobs, _wait(jobs.values())))
            timings["merge"] = time.perf_counter() - clock
        if stop >= 3:
            clock = time.perf_counter()
            futures = []
            for u in units.fewshot_grid(cfg, merges):
                merged = None if u["init"] == FRESH_INIT else merges[(u["target"], u["group"], u["init"])]
                futures.append(t.fewshot.submit(config, preps[u["target"]], u["init"], u["group"], u["shots"],
                                                u["seed"], merged, parent))
            results = _wait(futures)
            timings["fewshot"] = time.perf_counter() - clock
            out["results"] = results
        if stop >= 4:
            out["report"] = t.report(config, results, timings, list(merges.values()))
        out["timings"] = timings
    except BaseException:
        track.end(parent, "FAILED")
        raise
    track.end(parent, "FINISHED")
    return out


def run(cfg: SweepConfig, until: str = "report") -> dict:
    """Run the flow with the configured task runner (threads by default)."""
    workers = cfg.run.workers
    import torch

    # import the heavy, lazily-loading libraries once before threads fan out: `adapters`
    # and `transformers` resolve names lazily and race when two threads import them at once
    import mera.calibrate  # noqa: F401
    import mera.evaluate  # noqa: F401
    import mera.merge.ot  # noqa: F401
    import mera.models  # noqa: F401
    import mlflow.entities  # noqa: F401
    import ot  # noqa: F401

    torch.set_num_threads(cfg.run.torch_threads or max(1, (os.cpu_count() or 1) // workers))
    runner = ThreadPoolTaskRunner(max_workers=workers)
    return benchmark.with_options(task_runner=runner, name=f"benchmark-{cfg.name}")(cfg.model_dump(), until)
