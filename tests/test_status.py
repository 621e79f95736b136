"""`mera status` as a person reads it on a project where nothing has run yet."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import yaml

from tests.conftest import REPO


def test_status_on_a_fresh_project_lists_every_stage_of_the_plan(tmp_path, shared_data):
    smoke = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text())
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "status", "--config",
                           str(REPO / "configs" / "smoke.yaml"), "--set", f"paths.root={tmp_path}",
                           "--set", f"data.source={shared_data}"], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    counts = {m[1]: (int(m[2]), int(m[3])) for m in re.finditer(r"^\s+(\w+)\s+(\d+) done\s+(\d+) missing", proc.stdout,
                                                                re.M)}
    f, g = smoke["fewshot"], smoke["merge"]
    grouped = [i for i in f["inits"] if i != "adapter"]  # the merge inits: one per group
    assert counts["prepare"] == (0, len(set(smoke["pretrain"]["tasks"]) | set(f["targets"])))
    assert counts["pretrain"] == (0, len(smoke["pretrain"]["tasks"]))
    assert counts["merge"] == (0, len(f["targets"]) * len(g["groups"]) * len(g["methods"]))
    assert counts["fewshot"] == (0, len(f["targets"]) * (1 + len(grouped) * len(g["groups"])) * len(f["shots"])
                                 * len(f["seeds"]))
    assert list(tmp_path.iterdir()) == []  # it ran and wrote nothing
