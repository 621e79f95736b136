"""Resume cost: the first run of a sweep vs a re-run of the finished sweep (issue 6).

    python bench/resume.py [--config configs/smoke.yaml]

Both in a fresh process; the first in a fresh root (no unit or token cache; Prefect's home
and the MLflow store exist, as in a project after its first run: bench/_sweeps.py).
The re-run must train nothing: no manifest is rewritten and no MLflow run is added (both
checked). Ends with `RESULT resume_frac=<rerun / first> rerun_trainings=<n>`.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _sweeps as sw  # noqa: E402


def mlflow_runs() -> int:
    with sqlite3.connect(sw.MLFLOW_STORE / "mlflow.db") as db:
        return db.execute("select count(*) from runs").fetchone()[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/smoke.yaml")
    ap.add_argument("--reruns", type=int, default=3, help="re-runs timed; the median is kept")
    args = ap.parse_args()

    sw.setup(args.config)
    root = sw.fresh_root("resume")
    first = sw.mera_run(args.config, root)
    before, runs_before = sw.manifest_mtimes(root), mlflow_runs()
    reruns = sorted(sw.mera_run(args.config, root) for _ in range(args.reruns))
    rerun = reruns[len(reruns) // 2]
    after = sw.manifest_mtimes(root)
    retrained = sum(1 for k, t in after.items() if before.get(k) != t) + len(set(before) - set(after))
    new_runs = mlflow_runs() - runs_before
    print(f"sweep {args.config}: {len(before)} units, {sw.trainings(root)} trainings")
    print(f"{'run':<22}{'seconds':>9}")
    print(f"{'first':<22}{first:>9.1f}")
    print(f"{'re-run (median)':<22}{rerun:>9.2f}   (all: {', '.join(f'{t:.2f}' for t in reruns)})")
    print(f"re-run: {retrained} manifests rewritten, {new_runs} MLflow runs added")
    sw.cleanup(root)
    print(sw.result_line(resume_frac=rerun / first, rerun_trainings=retrained, rerun_new_mlflow_runs=new_runs,
                         first_s=first, rerun_s=rerun))


if __name__ == "__main__":
    main()
