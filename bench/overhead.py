"""Orchestration overhead: the smoke sweep through Prefect + MLflow vs the same units
called in a plain Python loop without either (issue 6).

    python bench/overhead.py [--config configs/smoke.yaml] [--workers 1]

Both run in a fresh process and a fresh root (no unit or token cache), with the same
number of workers (default 1: the plain loop is sequential) and torch threads, and both
do the same work: config + preflight, every unit, the report. Times are wall-clock of the
whole command, imports and the Prefect server's start included; Prefect's home and the
MLflow store exist already (as after a project's first run; bench/_sweeps.py). Ends with
`RESULT overhead_frac=<(orchestrated - plain) / plain>`.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _sweeps as sw  # noqa: E402


def plain(config: str, sets: list[str]) -> None:
    """The sweep as a plain loop over the same plan: no Prefect, no MLflow; the same units and report."""
    from flows import env
    from mera import plan, stages
    from mera.configfile import load_config, parse_override
    from mera.preflight import preflight
    from mera.report import write_report
    from mera.stages.prepare import import_data
    from mera.unit import untracked

    env.before_torch()
    cfg = load_config(config, dict(parse_override(s) for s in sets))
    env.configure(cfg)
    timings, results = {}, {}
    with untracked():
        import_data(cfg)
        preflight(cfg)
        env.preload()  # as `mera run` does before its flow, then the same freeze
        gc.freeze()
        nodes = plan.build(cfg)
        for stage in plan.STAGES[:-1]:
            clock = time.perf_counter()
            results.update(stages.run_all(cfg, [n for n in nodes if n.stage == stage], results))
            timings[stage] = time.perf_counter() - clock
        of = {s: [results[n.id] for n in nodes if n.stage == s] for s in ("merge", "fewshot", "mergeeval")}
        write_report(cfg, of["fewshot"], timings, of["merge"], [], of["mergeeval"])
    print(" ".join(f"{k}={v:.1f}" for k, v in timings.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/smoke.yaml")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2, help="alternating pairs; the fastest of each is kept")
    ap.add_argument("--plain-child", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.plain_child is not None:
        return plain(args.config, args.plain_child)

    sw.setup(args.config)
    extra = [f"run.workers={args.workers}"]
    times: dict[str, list[float]] = {"orchestrated": [], "plain": []}
    counts = set()
    for _ in range(args.repeats):
        roots = {k: sw.fresh_root(k) for k in times}
        times["orchestrated"].append(sw.mera_run(args.config, roots["orchestrated"], extra))
        sets = [s for s in sw.overrides(roots["plain"], extra) if s != "--set"]
        seconds, out = sw.timed([sys.executable, __file__, "--config", args.config, "--plain-child", *sets])
        times["plain"].append(seconds)
        counts.add(tuple(sw.trainings(r) for r in roots.values()))
        sw.cleanup(*roots.values())
    if len(counts) != 1 or len(set(next(iter(counts)))) != 1:
        sys.exit(f"the runs trained different numbers of units: {counts}")
    best = {k: min(v) for k, v in times.items()}
    print(f"sweep {args.config}, workers {args.workers}: {next(iter(counts))[0]} trainings per run; fastest of "
          f"{args.repeats} alternating runs (all: "
          f"{', '.join(f'{k} ' + ' '.join(f'{t:.1f}' for t in v) for k, v in times.items())})")
    print(f"{'run':<40}{'seconds':>9}")
    print(f"{'mera run (Prefect + MLflow)':<40}{best['orchestrated']:>9.1f}")
    print(f"{'plain loop (neither)':<40}{best['plain']:>9.1f}   stages: {out.strip().splitlines()[-1]}")
    pairs = [(o - p) / p for o, p in zip(times["orchestrated"], times["plain"])]
    print("each alternating pair's own (orchestrated - plain) / plain, for the VM's spread: "
          + " ".join(f"{f:.4f}" for f in pairs))
    print(sw.result_line(overhead_frac=(best["orchestrated"] - best["plain"]) / best["plain"],
                         orchestrated_s=best["orchestrated"], plain_s=best["plain"]))

if __name__ == "__main__":
    main()
