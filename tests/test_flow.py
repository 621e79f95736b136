"""The smoke sweep end to end through the real Prefect engine, MLflow and the manifests."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mera.configfile import load_config
from tests.conftest import REPO

pytestmark = pytest.mark.slow
STAGE_COUNTS = {"pretrain": 6, "merge": 18, "fewshot": 21}  # 3 targets x (adapter + 3 methods x 2 groups)


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


SMALL = {"data.max_eval": 24, "model.max_length": 32, "pretrain.max_examples": 24, "fewshot.shots": [2],
         "fewshot.seeds": [13], "fewshot.epochs": 1, "fewshot.min_steps": 2}


@pytest.fixture(scope="module")
def cfg(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    return load_config(REPO / "configs" / "smoke.yaml", {"paths.root": str(root), "data.source": str(shared_data),
                                                         **SMALL})


@pytest.fixture(scope="module")
def planned(cfg) -> list[str]:
    """The units `mera status -v` lists as missing before the first run: all of them."""
    sets = [f"{k}={json.dumps(v)}" for k, v in {"paths.root": cfg.paths.root, "data.source": cfg.data.source,
                                                 **SMALL}.items()]
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "status", "-v", "--config",
                           str(REPO / "configs" / "smoke.yaml"), *(x for s in sets for x in ("--set", s))],
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.split("missing:\n", 1)[1].split()


def task_states(flow_run_id: str, expected: int = sum(STAGE_COUNTS.values())) -> list[str]:
    """Final states of the flow run's unit tasks. Prefect 3 records task states through
    events, asynchronously: poll (bounded) until all of them have arrived and are final."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    for _ in range(120):
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        arrived = [r for r in runs if r.state is not None]  # a run's first state may come after the run
        states = [r.state.name for r in arrived if r.name.startswith(("pretrain", "merge", "fewshot"))]
        if len(states) >= expected and len(arrived) == len(runs) and all(r.state.is_final() for r in runs):
            return states
        time.sleep(0.5)
    return states


def child_runs(cfg, parent_id: str):
    from mera.unit import tracker

    t = tracker(cfg)
    runs = t.client.search_runs([t.experiment_id()], max_results=1000)
    assert all(r.data.tags.get("mlflow.parentRunId") == parent_id for r in runs if r.data.tags["mera.stage"] != "sweep")
    return [r for r in runs if r.data.tags["mera.stage"] != "sweep"]


@pytest.fixture(scope="module")
def first(harness, cfg, planned):
    from flows.benchmark import run

    return run(cfg)


def test_status_and_the_flow_name_every_unit_identically(cfg, first, planned):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    task_states(first["flow_run_id"])  # every task run has arrived
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[first["flow_run_id"]])))
    names = sorted(r.name for r in runs if "/" in r.name)  # not import-data, not report
    assert len(planned) == len(set(cfg.pretrain.tasks) | set(cfg.fewshot.targets)) + sum(STAGE_COUNTS.values())
    assert names == sorted(planned)


def test_sweep_logs_one_finished_child_per_unit_with_params_metrics_and_adapter(cfg, first):
    from mera.unit import tracker

    t = tracker(cfg)
    assert Path(t.uri.removeprefix("sqlite:///")).is_relative_to(Path(cfg.paths.root).resolve())
    sweeps = [r for r in t.client.search_runs([t.experiment_id()]) if r.data.tags["mera.stage"] == "sweep"]
    assert [r.info.run_id for r in sweeps] == [first["parent_run_id"]]
    assert sweeps[0].info.status == "FINISHED"
    assert re.fullmatch(r"smoke-\d{8}-\d{6}", sweeps[0].info.run_name)  # the sweep's name and its start
    runs = child_runs(cfg, first["parent_run_id"])
    by_stage = {s: [r for r in runs if r.data.tags["mera.stage"] == s] for s in ("pretrain", "merge", "fewshot")}
    assert [len(v) for v in by_stage.values()] == list(STAGE_COUNTS.values())
    for r in runs:
        assert r.info.status == "FINISHED"
        assert r.data.params and r.data.metrics
        files = {f.path for f in t.client.list_artifacts(r.info.run_id, "adapter")}
        assert "adapter/pytorch_adapter.bin" in files, r.info.run_name
    for r in by_stage["merge"]:  # the alignment diagnostics travel with the merged adapter
        assert "diagnostics.json" in {f.path for f in t.client.list_artifacts(r.info.run_id)}
        members = r.data.tags["members"].split(",")  # task names, not keys
        assert members == sorted(members) and set(members) <= set(cfg.pretrain.tasks)
        assert r.data.tags["target"] not in members
    # the sweep's run carries the headline numbers: mean accuracy per init and K, as the report has them
    summary = json.loads((cfg.paths.resolve("results") / "metrics.json").read_text())["mean_accuracy_by_init"]
    assert summary and sweeps[0].data.metrics["accuracy/mera-wts/same-track/K2"] == pytest.approx(
        summary["mera-wts [same-track] K=2"])
    assert sweeps[0].data.metrics["accuracy/adapter/K2"] == pytest.approx(summary["adapter K=2"])
    fewshot = by_stage["fewshot"]
    assert {r.data.tags["init"] for r in fewshot} == {"adapter", "mera-avg", "mera-wts", "mera-acts"}
    assert all({"target", "group", "init", "shots", "seed", "mera.key"} <= set(r.data.tags) for r in fewshot)
    assert all({"accuracy", "macro_f1", "trainable_params"} <= set(r.data.metrics) for r in fewshot)


def test_saved_adapters_name_the_tasks_labels_and_the_model_not_a_path(cfg, first):
    from mera.tasks import read_task

    heads = list(cfg.paths.resolve("artifacts").glob("*/*/adapter/head_config.json"))
    assert {h.parts[-4] for h in heads} == {"pretrain", "fewshot"}  # source adapters and fine-tunes
    for head in heads:
        task = json.loads((head.parents[1] / "manifest.json").read_text())
        names = read_task(cfg.data_dir(), task.get("target") or task["task"]).label_names
        assert json.loads(head.read_text())["config"]["label2id"] == {n: i for i, n in enumerate(names)}, head
    configs = list(cfg.paths.resolve("artifacts").glob("*/*/adapter/*config.json"))
    assert {json.loads(c.read_text())["model_name"] for c in configs} == {cfg.model.name}  # merged ones too
    assert {c.parts[-4] for c in configs} == {"pretrain", "merge", "fewshot"}


def test_every_saved_adapter_is_an_mlflow_model_that_loads_from_its_run_uri(cfg, first):
    """The runs that keep an adapter list it as their logged model (the UI's Models column),
    and `mlflow.pyfunc.load_model("runs:/<id>/model")` predicts with it: a fine-tune's label
    names, as accurate as its run says; a merge's (headless) [CLS] features."""
    import mlflow

    from mera import data
    from mera.stages.common import EVAL_SEED
    from mera.tasks import read_task
    from mera.unit import tracker

    runs = child_runs(cfg, first["parent_run_id"])
    kept = [r for r in runs if r.data.tags["mera.stage"] in ("pretrain", "merge", "fewshot")]
    assert kept and all(len(r.outputs.model_outputs) == 1 for r in kept)
    mlflow.set_tracking_uri(tracker(cfg).uri)
    tune = next(r for r in kept if r.data.tags["mera.stage"] == "fewshot" and r.data.tags["target"] == "sst2")
    spec = read_task(cfg.data_dir(), "sst2")
    rows = data.cap(data.load_split(cfg.data_dir(), spec, "validation"), cfg.data.max_eval, EVAL_SEED)
    model = mlflow.pyfunc.load_model(f"runs:/{tune.info.run_id}/model")
    predicted = list(model.predict(rows[["sentence1", "sentence2"]]))
    assert set(predicted) <= set(spec.label_names)
    correct = sum(p == spec.label_names[y] for p, y in zip(predicted, rows["label"]))
    assert abs(correct / len(rows) - tune.data.metrics["accuracy"]) <= 1 / len(rows)  # a near tie may flip
    merge = next(r for r in kept if r.data.tags["mera.stage"] == "merge")
    feats = mlflow.pyfunc.load_model(f"runs:/{merge.info.run_id}/model").predict(rows.head(3)[["sentence1"]])
    assert feats.shape == (3, 384)


def test_training_runs_list_the_data_they_read_as_mlflow_datasets(cfg, first):
    """The UI's Datasets column: each pretrain and fine-tune run names its task's train and
    validation splits, digested by the task's content hash (the prepare unit's)."""
    from mera.unit import tracker

    client = tracker(cfg).client
    hashes = {json.loads(m.read_text())["task"]: json.loads(m.read_text())["hash"]
              for m in cfg.paths.resolve("artifacts").glob("prepare/*/manifest.json")}
    trained = [r for r in child_runs(cfg, first["parent_run_id"])
               if r.data.tags["mera.stage"] in ("pretrain", "fewshot")]
    assert len(trained) == STAGE_COUNTS["pretrain"] + STAGE_COUNTS["fewshot"]
    for r in trained:
        task = r.data.tags.get("target") or r.data.tags["task"]
        inputs = client.get_run(r.info.run_id).inputs.dataset_inputs
        assert {(i.dataset.name, i.tags[0].value) for i in inputs} == {(f"{task}.train", "training"),
                                                                       (f"{task}.validation", "evaluation")}
        assert {i.dataset.digest for i in inputs} == {hashes[task][:36]}


def test_the_mlflow_ui_finds_one_cell_and_one_stage_as_a_person_searches(cfg, first):
    """Through `mera ui`'s server, the searches a person types in the UI's search box (the UI
    sends them to this endpoint): one fine-tune by target, init, group, K and seed; every run
    of one stage."""
    import urllib.request

    from tests.conftest import mera_ui

    def call(url: str, body: dict | None = None) -> dict:
        req = urllib.request.Request(url, json.dumps(body).encode() if body else None,
                                     {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    with mera_ui(Path(cfg.paths.root)) as url:
        api = f"{url}/api/2.0/mlflow"
        exp = call(f"{api}/experiments/get-by-name?experiment_name=mera-smoke")["experiment"]["experiment_id"]

        def search(text: str) -> list[dict]:
            return call(f"{api}/runs/search", {"experiment_ids": [exp], "filter": text, "max_results": 1000})["runs"]

        cell = search("tags.target = 'rte' and tags.init = 'mera-wts' and tags.group = 'same-track' "
                      "and tags.shots = '2' and tags.seed = '13'")
        assert [r["info"]["run_name"] for r in cell] == ["rte.mera-wts.same-track.k2.s13"]
        assert len(search("tags.`mera.stage` = 'merge'")) == STAGE_COUNTS["merge"]


def test_merge_groups_leave_the_target_out(cfg, first):
    dirs = [p.parent for p in cfg.paths.resolve("artifacts").glob("merge/*/manifest.json")]
    assert len(dirs) == STAGE_COUNTS["merge"]
    for d in dirs:
        m = json.loads((d / "manifest.json").read_text())
        assert m["target"] not in m["sources"]
        assert len(m["sources"]) == (2 if m["group"] == "same-track" else 6)
        diag = json.loads((d / "diagnostics.json").read_text())
        if m["method"] in ("mera-wts", "mera-acts"):  # OT lowers the matched cost in every module
            assert m["anchor"] in m["sources"]
            for entry in diag["alignment"]["modules"].values():
                assert all(a <= b + 1e-9 for a, b in zip(entry["cost_after"], entry["cost_before"]))
                assert all(sorted(p) == list(range(24)) for p in entry["plans"])


def test_report_table_and_metrics(cfg, first):
    report = Path(first["report"])
    text = report.read_text()
    assert "| rte | mera-wts [same-track] |" in text and "(N=1)" in text
    assert (report.parent / "accuracy_vs_k.png").stat().st_size > 1000
    assert "## One OT plan" in text and (report.parent / "ot_plan.png").stat().st_size > 1000
    metrics = json.loads((cfg.paths.resolve("results") / "metrics.json").read_text())
    assert set(metrics["accuracy"]) == {"sst2", "rte", "mrpc"}
    assert len(metrics["units"]) == STAGE_COUNTS["fewshot"]


def test_rerun_is_all_cache_hits_and_logs_nothing_new(cfg, first):
    from flows.benchmark import run

    before = {r.info.run_id for r in child_runs(cfg, first["parent_run_id"])}
    again = run(cfg)
    assert again["parent_run_id"] == first["parent_run_id"]
    assert {r.info.run_id for r in child_runs(cfg, first["parent_run_id"])} == before
    states = task_states(again["flow_run_id"])
    assert len(states) == sum(STAGE_COUNTS.values()) and set(states) == {"Cached"}


def test_a_sweep_that_reuses_units_links_their_runs(cfg, first):
    """Another sweep over the same units (here: the targets listed in another order) is a new
    sweep run; its units.json points at the runs that made each result, marked reused."""
    from flows.benchmark import run
    from mera.unit import tracker

    client = tracker(cfg).client
    linked = json.loads(Path(client.download_artifacts(first["parent_run_id"], "units.json")).read_text())
    assert len(linked) == sum(STAGE_COUNTS.values()) and not any(v["reused"] for v in linked.values())
    assert client.get_run(first["parent_run_id"]).data.tags["mera.reused_units"] == "0"
    other = run(cfg.model_copy(update={"fewshot": cfg.fewshot.model_copy(
        update={"targets": list(reversed(cfg.fewshot.targets))})}))
    assert other["parent_run_id"] != first["parent_run_id"]
    again = json.loads(Path(client.download_artifacts(other["parent_run_id"], "units.json")).read_text())
    assert again == {unit: {**v, "reused": True} for unit, v in linked.items()}
    assert client.get_run(other["parent_run_id"]).data.tags["mera.reused_units"] == str(len(linked))


def test_resume_reruns_exactly_the_missing_unit(cfg, first):
    from flows.benchmark import run
    from mera.status import finished_sweep

    fewshot_dirs = sorted(cfg.paths.resolve("artifacts").glob("fewshot/rte.mera-wts.all.*"))
    assert len(fewshot_dirs) == 1
    victim = fewshot_dirs[0]
    shutil.rmtree(victim)
    (victim.parent / f".tmp-{victim.name}-leftover").mkdir()  # a killed attempt's temp dir
    assert finished_sweep(cfg) is None
    before = {r.info.run_id for r in child_runs(cfg, first["parent_run_id"])}
    out = run(cfg)
    new = [r for r in child_runs(cfg, first["parent_run_id"]) if r.info.run_id not in before]
    assert [r.info.run_name for r in new] == [victim.name.rsplit("-", 1)[0]]
    assert (victim / "manifest.json").is_file()
    states = task_states(out["flow_run_id"])
    assert states.count("Completed") == 1 and states.count("Cached") == sum(STAGE_COUNTS.values()) - 1
    assert finished_sweep(cfg) is not None
