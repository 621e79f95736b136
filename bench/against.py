"""The same sweep with this tree's code and with a git ref's, side by side: whole `mera run`
processes, alternating, each in a fresh root (one Prefect home and MLflow store, as in
bench/overhead.py), plus the plain loop of bench/overhead.py as the reference.

    python bench/against.py --ref 1c4ad93 [--config configs/smoke.yaml] [--repeats 2]

The ref is checked out in a temporary git worktree and run with this environment's Python.
Ends with `RESULT ratio=<this tree / ref>` (fastest of each).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _sweeps as sw  # noqa: E402


def timed_run(tree: Path, cmd: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} in {tree} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", required=True, help="a git commit, branch or tag to compare with")
    ap.add_argument("--config", default="configs/smoke.yaml")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    old = Path(tempfile.mkdtemp(prefix="mera-bench-ref-")) / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", str(old), args.ref], cwd=sw.PROJECT, check=True,
                   capture_output=True)
    try:
        sw.setup(args.config)
        times: dict[str, list[float]] = {"this tree": [], args.ref: [], "plain loop": []}
        for _ in range(args.repeats):
            for name in times:
                root = sw.fresh_root("against")
                sets = sw.overrides(root, ["run.workers=1"])
                if name == "plain loop":
                    cmd = [sys.executable, "bench/overhead.py", "--config", args.config, "--plain-child",
                           *[s for s in sets if s != "--set"]]
                else:
                    cmd = [sys.executable, "-m", "flows.cli", "run", "--config", args.config, *sets]
                times[name].append(timed_run(old if name == args.ref else sw.PROJECT, cmd))
                sw.cleanup(root)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=sw.PROJECT, capture_output=True)
    best = {k: min(v) for k, v in times.items()}
    print(f"sweep {args.config}, 1 worker; fastest of {args.repeats} alternating runs (all: "
          f"{', '.join(f'{k} ' + ' '.join(f'{t:.1f}' for t in v) for k, v in times.items())})")
    for name, seconds in best.items():
        print(f"{name:<40}{seconds:>9.1f}")
    print(sw.result_line(ratio=best["this tree"] / best[args.ref], this_s=best["this tree"], ref_s=best[args.ref],
                         plain_s=best["plain loop"]))


if __name__ == "__main__":
    main()
