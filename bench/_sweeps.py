"""What bench/overhead.py, resume.py and parallel.py share: run a sweep in a fresh root
(its own artifacts, MLflow store, Prefect home, reports) and time it from outside.

The data is read from the project's `data/` (imported once, `mera data import` or the
first `mera run`), so no run copies it; every other path lives under the bench's temp root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
MERA = [str(Path(sys.executable).parent / "mera")]  # the console script of the same environment


def fresh_root(tag: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"mera-bench-{tag}-"))


# One Prefect home and one MLflow store for every bench run, created by `setup` (not
# timed): as in a project, where only the very first run creates Prefect's database (~10 s
# more, once) and MLflow's (~1 s more, once). Both are made anew by each bench.
PREFECT_HOME = Path(tempfile.gettempdir()) / "mera-bench-prefect"
MLFLOW_STORE = Path(tempfile.gettempdir()) / "mera-bench-mlflow"


def overrides(root: Path, extra: list[str] = ()) -> list[str]:
    sets = [f"paths.root={root}", f"data.dir={PROJECT / 'data'}", f"paths.prefect_home={PREFECT_HOME}",
            f"paths.mlflow={MLFLOW_STORE}", *extra]
    return [a for s in sets for a in ("--set", s)]


def setup(config: str) -> None:
    """Import the sweep's tasks into the project's data/, create a new Prefect home and a new
    MLflow store (a run up to `prepare`; not timed): each bench starts from a project after
    its first run. A Prefect database kept from earlier benches grew with each of them (450 MB
    after two days of runs) and slowed the API server's start and its work for each task."""
    shutil.rmtree(MLFLOW_STORE, ignore_errors=True)
    shutil.rmtree(PREFECT_HOME, ignore_errors=True)
    root = fresh_root("setup")
    subprocess.run([*MERA, "run", "--config", config, "--until", "prepare", *overrides(root)], cwd=PROJECT,
                   check=True, capture_output=True)
    cleanup(root)


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, str]:
    """Wall seconds of a command run from the project root, and its output; fails loudly."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=PROJECT, capture_output=True, text=True, env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout + proc.stderr


def mera_run(config: str, root: Path, extra: list[str] = ()) -> float:
    seconds, _ = timed([*MERA, "run", "--config", config, *overrides(root, extra)])
    return seconds


def trainings(root: Path) -> int:
    """Fine-tunes and pretrainings whose manifests exist under root (each is one training)."""
    return sum(1 for stage in ("pretrain", "fewshot") for _ in (root / "artifacts" / stage).glob("*/manifest.json"))


def manifest_mtimes(root: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in (root / "artifacts").glob("*/*/manifest.json")}


def cleanup(*roots: Path) -> None:
    if os.environ.get("MERA_BENCH_KEEP"):
        print("kept:", *roots)
        return
    for r in roots:
        shutil.rmtree(r, ignore_errors=True)


def result_line(**values) -> str:
    return "RESULT " + " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
