"""Same config and seeds give identical metrics on CPU, run to run and whatever runs the
units: one sweep in three project folders through the real CLI: one thread, two workers as
the shipped configs run them, and a two-worker local Dask cluster (prefect-dask): three
independent runs that must agree bit for bit.
Each unit seeds its own RNG and runs alone in its process, so where it runs must not change
a bit of its metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def run_sweep(root, shared_data, run: dict) -> dict[str, dict]:
    cfg = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text())
    cfg["data"].update(source=str(shared_data), max_eval=24)
    cfg["model"]["max_length"] = 32
    cfg["pretrain"].update(tasks=["imdb", "mr", "qnli"], max_examples=32)
    cfg["merge"].update(groups=["all"], methods=["mera-avg", "mera-wts"], params={})
    cfg["fewshot"].update(targets=["sst2", "rte"], inits=["adapter", "mera-wts", "head"], shots=[4], seeds=[13],
                          epochs=1, min_steps=3)
    cfg["run"] = {**run, "torch_threads": 1}  # one intra-op thread everywhere: same float reductions
    root.mkdir()
    (root / "sweep.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "run", "--config", "sweep.yaml"], cwd=root,
                          capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = {}
    for stage in ("pretrain", "fewshot"):
        for f in (root / "artifacts" / stage).glob("*/manifest.json"):
            m = json.loads(f.read_text())
            out[f"{stage}/{f.parent.name}"] = {k: v for k, v in m["metrics"].items()
                                               if "seconds" not in k and "per_s" not in k}
    return out


def test_thread_process_and_dask_runners_give_identical_metrics(tmp_path, shared_data):
    threads = run_sweep(tmp_path / "thread", shared_data, {"workers": 1, "runner": "thread"})
    # two workers and no runner named, as the shipped configs run; then the same on Dask
    processes = run_sweep(tmp_path / "process", shared_data, {"workers": 2})
    dask = run_sweep(tmp_path / "dask", shared_data, {"workers": 2, "runner": "dask"})
    assert len(threads) == 3 + 2 * 3  # 3 adapters; 2 targets x 3 inits
    assert processes == threads  # keys (hence configs and data) and every metric, bit for bit
    assert dask == threads
