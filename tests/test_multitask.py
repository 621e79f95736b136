"""merge-eval (issue 8): the multitask study's groups, its units on real adapters of every
kind, and one tiny sweep through the real CLI (Prefect, MLflow) up to its report."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch
import yaml

from mera import multitask as mtl
from mera import plan, stages
from mera.config import ConfigError
from mera.configfile import load_config
from mera.merge import not_applicable
from mera.plan import multitask_groups
from mera.stages.prepare import import_data
from mera.unit import untracked
from tests.conftest import REPO

POOL = ["mr", "rte", "sst2"]


PRETRAIN = {"tasks": POOL, "max_examples": 48, "epochs": 1, "batch_size": 16, "lr": 3e-3}
MULTITASK = {"kinds": ["bottleneck", "lora", "sparse"], "methods": ["mera-avg", "mera-wts", "ties"], "sizes": [2, 3],
             "heldout_shots": 4, "heldout_seeds": [13], "head_steps": 30, "lr_by_kind": {"sparse": 2e-3}}


def _config(root, shared_data, **multitask) -> dict:
    return {
        "name": "mt-test", "model": {"max_length": 32},
        "data": {"source": str(shared_data), "max_eval": 24},
        "pretrain": PRETRAIN, "multitask": {**MULTITASK, **multitask}, "paths": {"root": str(root)},
    }


def test_groups_are_nested_seeded_and_drawn_once_at_full_size():
    tasks = [f"t{i}" for i in range(15)]
    g = multitask_groups(tasks, [2, 5, 10, 15], draws=3, seed=0)
    assert [(n, d) for n, d, _ in g] == [(2, 0), (5, 0), (10, 0), (15, 0), (2, 1), (5, 1), (10, 1), (2, 2), (5, 2),
                                         (10, 2)]
    by_draw = {}
    for n, d, members in g:
        assert len(members) == n == len(set(members))
        by_draw.setdefault(d, []).append(set(members))
    for sets in by_draw.values():
        assert all(a < b for a, b in zip(sets, sets[1:]))  # each larger group holds the smaller one
    assert by_draw[0][0] != by_draw[1][0]  # draws differ
    assert g == multitask_groups(list(reversed(tasks)), [2, 5, 10, 15], draws=3, seed=0)  # the pool order is moot


def test_methods_that_align_units_are_not_applicable_to_deltas():
    assert not_applicable("bottleneck", "mera-wts") is None
    assert not_applicable("lora", "mera-wts") is None
    assert "aligns adapter units" in not_applicable("sparse", "mera-wts")
    assert "aligns adapter units" in not_applicable("full", "mera-acts")
    assert not_applicable("lora", "ot-ties") is not None
    assert not_applicable("sparse", "ties") is None


def test_a_head_trained_on_features_learns_them():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(40, 16, generator=g)
    labels = (feats[:, 0] > 0).long()
    head = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    before = mtl.accuracy(mtl.head_logits(head, feats), labels)
    mtl.train_head(head, feats, labels, mtl.HeadSettings(steps=300, lr=1e-2, batch_size=8), seed=0)
    assert mtl.accuracy(mtl.head_logits(head, feats), labels) == 1.0 > before


def test_multitask_config_needs_no_fewshot_and_names_bad_values(tmp_path, shared_data):
    path = tmp_path / "mt.yaml"
    path.write_text(yaml.safe_dump(_config(tmp_path, shared_data)))
    cfg = load_config(path)
    assert cfg.fewshot.targets == [] and cfg.multitask.sizes == [2, 3]
    assert load_config(path, {"multitask.kinds": ["sparse"]}).multitask.kinds == ["sparse"]
    for override, words in [({"multitask.sizes": [2, 4]}, "sizes [2, 4]: a group of 4 tasks"),
                            ({"multitask.sizes": [1, 2]}, "at least 2 tasks"),
                            ({"multitask.kinds": ["bottleneck", "dense"]}, "dense"),
                            ({"multitask.methods": ["mera-wtz"]}, "mera-wts"),
                            ({"multitask.lr_by_kind": {"full": 1e-4}}, "not in multitask.kinds")]:
        with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("]", r"\]")):
            load_config(path, override)


@pytest.fixture(scope="module")
def pool(tiny):
    """The pool's adapters of every kind in the tiny project, pretrained through the plan's
    units (no orchestrator)."""
    cfg = tiny({"name": "mt-test", "data.max_eval": 24, "multitask": MULTITASK,
                **{f"pretrain.{k}": v for k, v in PRETRAIN.items()}})
    with untracked():
        import_data(cfg)
        nodes = [n for n in plan.build(cfg) if n.stage in ("prepare", "pretrain")]
        out = stages.run_all(cfg, nodes)
    adapters = {k: [out[f"pretrain/{plan.adapter_name(t, k)}"] for t in POOL] for k in cfg.multitask.kinds}
    return cfg, adapters


def _mergeeval(cfg, kind: str, method: str, members: list[str], pool: list[dict]) -> dict:
    node = plan.mergeeval_node(kind, method, len(members), 0, members, POOL)
    with untracked():
        return stages.run(cfg, node, pool)


@pytest.mark.parametrize("kind", ["bottleneck", "lora", "sparse"])
def test_a_group_of_one_scores_exactly_its_own_adapter(pool, kind):
    """The merged model of one adapter with that task's own head reproduces the adapter's own
    validation accuracy (same rows, same model): heads, features and normalisation line up."""
    cfg, adapters = pool
    out = _mergeeval(cfg, kind, "mera-avg", ["sst2"], adapters[kind])
    rows = {r["task"]: r for r in out["rows"]}
    assert rows["sst2"]["split"] == "in" and rows["sst2"]["normalised"] == 1.0
    assert rows["sst2"]["accuracy"] == next(a for a in adapters[kind] if a["task"] == "sst2")["metrics"]["accuracy"]
    assert {rows[t]["split"] for t in ("mr", "rte")} == {"held"}
    assert out["summary"]["in_n"] == 1 and out["summary"]["held_n"] == 2
    assert out["weights_kept"] == ("adapter" if kind != "sparse" else "none (a delta: re-merge to rebuild)")


def test_a_merged_group_is_evaluated_with_each_tasks_own_head(pool):
    cfg, adapters = pool
    a = _mergeeval(cfg, "bottleneck", "ties", ["mr", "sst2"], adapters["bottleneck"])
    b = _mergeeval(cfg, "bottleneck", "ties", ["mr", "sst2"], adapters["bottleneck"])
    assert a["path"] == b["path"] and a["rows"] == b["rows"]  # the second call finds the finished unit
    rows = {r["task"]: r for r in a["rows"]}
    assert [rows[t]["split"] for t in POOL] == ["in", "held", "in"]
    for r in a["rows"]:
        assert r["normalised"] == pytest.approx(r["accuracy"] / r["own_accuracy"])
        assert r["n_eval"] == 24


@pytest.mark.slow
def test_a_multitask_sweep_runs_through_the_cli_and_reports(tmp_path, shared_data):
    raw = _config(tmp_path, shared_data, kinds=["bottleneck", "sparse"], methods=["mera-avg", "mera-wts"])
    (tmp_path / "mt.yaml").write_text(yaml.safe_dump(raw))
    cli = [sys.executable, "-m", "flows.cli"]
    env = {**__import__("os").environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([*cli, "run", "--config", "mt.yaml"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "mergeeval" in done.stdout and "failed" not in done.stdout
    status = subprocess.run([*cli, "status", "--config", "mt.yaml"], cwd=tmp_path, env=env, capture_output=True,
                            text=True).stdout
    counts = {m[0]: (int(m[1]), int(m[2])) for m in re.findall(r"^\s+(\w+)\s+(\d+) done\s+(\d+) missing", status, re.M)}
    assert counts["pretrain"] == (6, 0)  # 3 tasks x 2 kinds
    assert counts["mergeeval"] == (6, 0)  # (bottleneck x 2 methods + sparse x mera-avg) x 2 sizes
    report = (tmp_path / "reports" / "mt-test" / "report.md").read_text()
    assert "## Multi-task merging without fine-tuning" in report and "mera-wts aligns adapter units" in report
    assert "| sparse | mera-wts | n/a | n/a |" in report and "— (none held out)" in report
    assert (tmp_path / "reports" / "mt-test" / "multitask_in.png").is_file()
    assert "data:image/png;base64" in (tmp_path / "reports" / "mt-test" / "report.html").read_text()
    metrics = json.loads((tmp_path / "results" / "metrics.json").read_text())
    cells = metrics["multitask"]["cells"]
    assert set(cells) == {"bottleneck", "sparse"} and set(cells["sparse"]) == {"mera-avg"}
    assert set(cells["bottleneck"]["mera-wts"]) == {"2", "3"}
    assert "held_normalised" in cells["bottleneck"]["mera-avg"]["2"]
    assert "held_normalised" not in cells["bottleneck"]["mera-avg"]["3"]  # the whole pool merged: none held out
    assert len(metrics["units"]) == 6
    again = subprocess.run([*cli, "run", "--config", "mt.yaml"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "nothing to do" in again.stdout  # a finished study returns at once
