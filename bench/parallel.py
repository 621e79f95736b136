"""Fan-out scaling: the smoke sweep's fan-out stages (pretrain, merge, fewshot) with 1 vs 2
workers (issue 6).

    python bench/parallel.py [--config configs/smoke.yaml] [--runner thread]

Each run in a fresh root and process. Two settings of torch threads per worker:
`1-thread` gives every worker one thread, so 1 vs 2 workers is 1 vs 2 cores doing units
(how the fan-out scales out: the headline `parallel_speedup`); `policy` is mera's default
(cores / workers: 1 worker x 2 threads vs 2 workers x 1 thread here), where one worker
already uses both cores through torch's intra-op threads (`parallel_speedup_policy`).
Time = the sum of the fan-out stages' wall times `mera run` prints. Ends with
`RESULT parallel_speedup=<t1/t2, 1 thread per worker> parallel_speedup_policy=<t1/t2>`.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _sweeps as sw  # noqa: E402

FANOUT = ("pretrain", "merge", "fewshot")


def fanout_seconds(config: str, workers: int, runner: str, threads: int | None) -> tuple[float, dict]:
    root = sw.fresh_root(f"w{workers}")
    extra = [f"run.workers={workers}", f"run.runner={runner}"] + ([f"run.torch_threads={threads}"] if threads else [])
    _, out = sw.timed([*sw.MERA, "run", "--config", config, *sw.overrides(root, extra)])
    stages = {m.group(1): float(m.group(2)) for m in re.finditer(r"^\s+(\w+)\s+([\d.]+) s$", out, re.M)}
    n = sw.trainings(root)
    sw.cleanup(root)
    return sum(stages[s] for s in FANOUT), {"trainings": n, **stages}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/smoke.yaml")
    ap.add_argument("--runner", default="thread", choices=["thread", "process", "dask"])
    args = ap.parse_args()

    sw.setup(args.config)
    rows = {}
    for label, threads in (("policy", None), ("1-thread", 1)):
        for workers in (1, 2):
            rows[(label, workers)] = fanout_seconds(args.config, workers, args.runner, threads)
    print(f"sweep {args.config}, runner {args.runner}; seconds of the fan-out stages ({', '.join(FANOUT)})")
    print(f"{'torch threads':<16}{'workers':>8}{'seconds':>9}   stages")
    for (label, workers), (t, stages) in rows.items():
        print(f"{label:<16}{workers:>8}{t:>9.1f}   {stages}")
    speed = {label: rows[(label, 1)][0] / rows[(label, 2)][0] for label in ("policy", "1-thread")}
    print(sw.result_line(parallel_speedup=speed["1-thread"], parallel_speedup_policy=speed["policy"],
                         t1_s=rows[("1-thread", 1)][0], t2_s=rows[("1-thread", 2)][0]))


if __name__ == "__main__":
    main()
