"""Bad input never hurts: every case goes through the real CLI in a subprocess and must give
exit code 2, one line naming the bad value and what is accepted, no traceback, and stores
(artifacts, MLflow) without a trace of it. The cases are listed in docs/bad-inputs.md."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import REPO

TASKS = ("cr", "mr", "rte", "mrpc")  # small real tasks: sentiment, nli, paraphrase
BASE = {
    "name": "bad",
    "model": {"max_length": 32},
    "data": {"dir": "data", "source": "SOURCE", "max_eval": 16},
    "pretrain": {"tasks": ["mr", "rte"], "max_examples": 16, "epochs": 1},
    "merge": {"groups": ["all"], "methods": ["mera-avg"]},
    "fewshot": {"targets": ["cr"], "inits": ["adapter", "mera-avg"], "shots": [2], "seeds": [13], "epochs": 1,
                "min_steps": 2},
    "run": {"workers": 1},
}


def mera(args: list[str], cwd: Path, timeout: int = 300, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env, **kw)


def store_state(root: Path) -> dict:
    """What the stores hold: unit directories with a manifest, temp dirs, and MLflow runs."""
    art = root / "artifacts"
    units = sorted(str(p.parent.relative_to(art)) for p in art.glob("*/*/manifest.json")) if art.is_dir() else []
    tmp = sorted(str(p) for p in art.glob("*/.tmp-*")) if art.is_dir() else []
    runs = 0
    db = root / "mlruns" / "mlflow.db"
    if db.is_file():
        import sqlite3

        with sqlite3.connect(db) as con:
            runs = con.execute("select count(*) from runs").fetchone()[0]
    return {"units": units, "tmp": tmp, "runs": runs}


@pytest.fixture
def project(tmp_path, shared_data):
    """A project dir with a data source of four real tasks and a valid tiny config."""
    source = tmp_path / "source"
    for t in TASKS:
        shutil.copytree(shared_data / t, source / t)
    cfg = json.loads(json.dumps(BASE).replace("SOURCE", str(source)))
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path, source, cfg


def write_config(root: Path, cfg: dict, name: str = "bad.yaml") -> str:
    (root / name).write_text(yaml.safe_dump(cfg))
    return name


def set_key(cfg: dict, dotted: str, value) -> dict:
    cfg = json.loads(json.dumps(cfg))
    *parents, leaf = dotted.split(".")
    node = cfg
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    return cfg


def assert_clean_failure(proc, *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("mera: error:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# ---- config ---------------------------------------------------------------------------------------

CONFIG_CASES = {
    "unknown key": ("fewshot.seed", [1], ["fewshot.seed: unknown key", "did you mean 'seeds'"]),
    "wrong type": ("fewshot.epochs", "many", ["fewshot.epochs", "valid integer", "'many'"]),
    "zero shots": ("fewshot.shots", [0], ["shots must be positive", "[0]"]),
    "negative shots": ("fewshot.shots", [-4], ["shots must be positive", "[-4]"]),
    "empty seed list": ("fewshot.seeds", [], ["fewshot.seeds", "at least 1 item"]),
    "unknown method": ("merge.methods", ["mera-wtz"], ["unknown merge method 'mera-wtz'", "did you mean 'mera-wts'"]),
    "unknown init": ("fewshot.inits", ["adapter", "fussion"], ["unknown init 'fussion'", "did you mean 'fusion'"]),
    "unknown group": ("merge.groups", ["same-trak"], ["unknown group 'same-trak'", "same-track, cross-track, all"]),
    "bad merge parameter": ("merge.params", {"mera-avg": {"anchor": "first"}},
                            ["merge.params.mera-avg", "unknown parameter(s) anchor", "accepted: over"]),
    "bad merge value": ("merge.params", {"mera-avg": {}, "ties": {"density": 3}},
                        ["ties", "density must be in [0, 1]"]),
    "unknown adapter kind": ("model.adapter", "lorra", ["model.adapter", "'bottleneck', 'houlsby', 'lora', 'sparse'"]),
    "few-shot from a sparse delta": ("model.adapter", "sparse", ["model.adapter 'sparse'", "accepted with sparse"]),
    "multitask group larger than the pool": ("multitask", {"sizes": [2, 50]},
                                             ["multitask.sizes [2, 50]", "accepted: sizes from 2 to"]),
    "multitask unknown adapter kind": ("multitask", {"kinds": ["bottleneck", "dense"]}, ["multitask.kinds", "'dense'"]),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_config_mistakes(case, project):
    root, _, cfg = project
    key, value, needles = CONFIG_CASES[case]
    proc = mera(["run", "--config", write_config(root, set_key(cfg, key, value))], root)
    assert_clean_failure(proc, *needles)
    assert not (root / "artifacts").exists() and not (root / "data").exists()  # caught before anything


def test_cuda_asked_on_a_machine_without_a_gpu(project):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: run.device cuda is valid here")
    root, _, cfg = project
    proc = mera(["run", "--config", write_config(root, set_key(cfg, "run.device", "cuda"))], root)
    assert_clean_failure(proc, "run.device is 'cuda'", "accepted here: auto, cpu")
    assert not (root / "artifacts").exists() and not (root / "data").exists()


def test_malformed_yaml(project):
    root, _, _ = project
    (root / "bad.yaml").write_text("name: bad\nfewshot: {shots: [2, \n")
    assert_clean_failure(mera(["run", "--config", "bad.yaml"], root), "bad.yaml", "not valid YAML")


def test_missing_config_file(project):
    root, _, _ = project
    assert_clean_failure(mera(["run", "--config", "nope.yaml"], root), "'nope.yaml' does not exist")


# ---- data -----------------------------------------------------------------------------------------

def _rewrite(source: Path, task: str, split: str, change) -> None:
    path = source / task / f"{split}.parquet"
    df = change(pd.read_parquet(path))
    df.to_parquet(path, index=False)


DATA_CASES = {
    "unknown task": (lambda s: None, {"fewshot.targets": ["crr"]}, ["task 'crr'", "did you mean 'cr'"]),
    "missing data dir": (lambda s: shutil.rmtree(s), {}, ["is not a directory"]),
    "meta.json missing": (lambda s: (s / "cr" / "meta.json").unlink(), {}, ["task 'cr'", "meta.json"]),
    "meta.json invalid": (lambda s: (s / "mr" / "meta.json").write_text("{not json"), {},
                          ["mr/meta.json must be JSON with 'task', 'track' and 'label_names'"]),
    "parquet missing a column": (lambda s: _rewrite(s, "rte", "train", lambda d: d.drop(columns=["label"])), {},
                                 ["rte/train.parquet lacks column(s) ['label']", "sentence1", "sentence2"]),
    "label out of range": (lambda s: _rewrite(s, "mr", "validation", lambda d: d.assign(label=d["label"] + 5)), {},
                           ["mr/validation.parquet: label", "outside 0..1"]),
    "null text": (lambda s: _rewrite(s, "cr", "train", lambda d: d.assign(sentence1=[None] + list(d["sentence1"][1:]))),
                  {}, ["cr/train.parquet: sentence1 is null or empty in row 0", "accepted: non-empty text"]),
    "labels as text": (lambda s: _rewrite(s, "mr", "train", lambda d: d.assign(label=d["label"].map(str))), {},
                       ["mr/train.parquet: column label holds str values (e.g. '", "accepted: integer class indices"]),
    "text as numbers": (lambda s: _rewrite(s, "rte", "validation", lambda d: d.assign(sentence2=range(len(d)))), {},
                        ["rte/validation.parquet: column sentence2 holds int values (e.g. 0 in row 0)",
                         "accepted: text (str)"]),
    "labels as booleans": (lambda s: _rewrite(s, "mr", "validation", lambda d: d.assign(label=d["label"] > 0)), {},
                           ["mr/validation.parquet: column label holds bool values", "accepted: integer class"]),
    "empty split": (lambda s: _rewrite(s, "rte", "validation", lambda d: d.head(0)), {},
                    ["rte/validation.parquet has no rows"]),
    "two tasks with one name": (lambda s: shutil.copytree(s / "mr", s / "mr2"),
                                {"pretrain.tasks": ["mr", "mr2", "rte"]},
                                ["mr2/meta.json names task 'mr' but lives in directory 'mr2'"]),
    "K larger than the smallest class": (
        lambda s: None, {"fewshot.shots": [100000]},
        ["fewshot.shots 100000 is too large for target 'cr'", "accepted: shots up to"]),
    "held-out K larger than a task's smallest class": (
        lambda s: None, {"multitask": {"heldout_shots": 100000, "sizes": [2]}},
        ["multitask.heldout_shots 100000 is too large for task", "accepted: heldout_shots up to"]),
    "group empty once the target is removed": (
        lambda s: None, {"merge.groups": ["same-track"], "pretrain.tasks": ["mr", "rte"], "fewshot.targets": ["mrpc"]},
        ["group 'same-track' is empty for target 'mrpc'", "add a source"]),
    "missing base model path": (lambda s: None, {"model.name": "./models/no-such-model"},
                                ["model.name './models/no-such-model' is not a model directory", "accepted:"]),
}


@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_data_and_model_mistakes(case, project):
    root, source, cfg = project
    damage, overrides, needles = DATA_CASES[case]
    damage(source)
    for key, value in overrides.items():
        cfg = set_key(cfg, key, value)
    proc = mera(["run", "--config", write_config(root, cfg)], root)
    assert_clean_failure(proc, *needles)
    assert store_state(root) == {"units": [], "tmp": [], "runs": 0}


# ---- paths and stores -----------------------------------------------------------------------------

def test_unreachable_mlflow_uri_fails_fast(project):
    root, _, cfg = project
    start = time.perf_counter()
    proc = mera(["run", "--config", write_config(root, set_key(cfg, "paths.mlflow", "http://127.0.0.1:9"))], root)
    assert_clean_failure(proc, "paths.mlflow 'http://127.0.0.1:9' is unreachable", "mlflow server")
    assert time.perf_counter() - start < 60  # no retry loop of minutes
    assert store_state(root)["units"] == []


def test_unwritable_output_path(project):
    root, _, cfg = project
    (root / "blocker").write_text("a file, not a folder")
    proc = mera(["run", "--config", write_config(root, set_key(cfg, "paths.reports", "blocker/reports"))], root)
    assert_clean_failure(proc, "paths.reports", "blocker/reports", "is not writable")
    assert store_state(root)["units"] == []


def test_report_for_a_sweep_never_run(project):
    root, _, _ = project
    assert_clean_failure(mera(["report", "--config", "ok.yaml"], root), "sweep 'bad' has no finished fine-tunes",
                         "mera run --config ok.yaml")


def test_bad_until_and_unknown_import_task(project):
    root, source, _ = project
    assert_clean_failure(mera(["run", "--config", "ok.yaml", "--until", "merg"], root), "--until 'merg'",
                         "prepare, pretrain, merge, fewshot, mergeeval, report")
    assert_clean_failure(mera(["data", "import", "--from", str(source), "--tasks", "rtee", "--no-dvc"], root),
                         "task 'rtee'", "did you mean 'rte'")


# ---- adapters ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved_adapters(tmp_path_factory):
    """Two real adapters of reduction factor 16 and one of 8, saved by the library."""
    from mera.config import ModelConfig
    from mera.models import ADAPTER, build_model

    root = tmp_path_factory.mktemp("adapters")
    for name, rf in (("a", 16), ("b", 16), ("c", 8)):
        model, _ = build_model(ModelConfig(reduction_factor=rf), 2, seed=len(name))
        model.save_adapter(str(root / name), ADAPTER, with_head=False)
    return root


def _merge_args(*dirs) -> list[str]:
    return ["merge", *[x for d in dirs for x in ("--adapter", str(d))], "--method", "mera-wts", "--out", "merged"]


def test_adapters_of_different_reduction_factors(saved_adapters, tmp_path):
    proc = mera(_merge_args(saved_adapters / "a", saved_adapters / "c"), tmp_path)
    assert_clean_failure(proc, "another adapter config", "reduction factor")
    assert not (tmp_path / "merged").exists()


def test_adapters_of_different_base_models(saved_adapters, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(saved_adapters / "b", other)
    meta = json.loads((other / "adapter_config.json").read_text())
    other_meta = {**meta, "hidden_size": 768, "model_name": "bert-base-uncased"}
    (other / "adapter_config.json").write_text(json.dumps(other_meta))
    proc = mera(_merge_args(saved_adapters / "a", other), tmp_path)
    assert_clean_failure(proc, "base model", "bert-base-uncased")
    assert not (tmp_path / "merged").exists()


def test_adapter_dir_without_weights(saved_adapters, tmp_path):
    empty = tmp_path / "empty"
    shutil.copytree(saved_adapters / "b", empty)
    (empty / "pytorch_adapter.bin").unlink()
    assert_clean_failure(mera(_merge_args(saved_adapters / "a", empty), tmp_path), "pytorch_adapter.bin is missing")


def test_truncated_weights_file(saved_adapters, tmp_path):
    cut = tmp_path / "cut"
    shutil.copytree(saved_adapters / "b", cut)
    weights = cut / "pytorch_adapter.bin"
    weights.write_bytes(weights.read_bytes()[:5000])
    assert_clean_failure(mera(_merge_args(saved_adapters / "a", cut), tmp_path), "pytorch_adapter.bin cannot be read",
                         "truncated")
    assert not (tmp_path / "merged").exists()


def test_debug_shows_the_traceback(project):
    root, _, cfg = project
    proc = mera(["--debug", "run", "--config", write_config(root, set_key(cfg, "fewshot.shots", [0]))], root)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


# ---- concurrent runs and interruption --------------------------------------------------------------

def test_a_second_run_of_a_sweep_exits_clearly(project):
    root, _, _ = project
    (root / "artifacts").mkdir()
    with open(root / "artifacts" / ".lock-bad", "a+") as held:  # what a running `mera run` holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("pid 4242, since now")
        held.flush()
        proc = mera(["run", "--config", "ok.yaml"], root)
    assert_clean_failure(proc, "sweep 'bad' is already running (pid 4242", "changed nothing")
    assert store_state(root) == {"units": [], "tmp": [], "runs": 0}


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])  # one thread; two worker processes (the runner several workers get)
def test_sigint_stops_cleanly_and_the_sweep_resumes(project, workers):
    root, _, cfg = project
    # 8 fine-tunes after the first adapter: the interrupt lands while there is work left
    # (with ok.yaml's 2 the sweep could end before the signal did)
    long = set_key(set_key(cfg, "fewshot.seeds", [13, 21, 42, 87]), "run.workers", workers)
    config = write_config(root, long, "long.yaml")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "run", "--config", config], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and not list((root / "artifacts").glob("pretrain/*/manifest.json")):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C in a terminal: the whole process group
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, (out[-2000:], err[-2000:])
    assert "interrupted" in err and "run the same command again to resume" in err and "Traceback" not in err
    state = store_state(root)
    assert state["units"] and not state["tmp"]  # completed units only, no half-written directory
    assert len([u for u in state["units"] if u.startswith("fewshot/")]) < 8  # it stopped part-way
    done = subprocess.run([sys.executable, "-m", "flows.cli", "run", "--config", config], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len([u for u in store_state(root)["units"] if u.startswith("fewshot/")]) == 8
