"""Sweeps that survive: SIGKILL mid-sweep, deleted and corrupted artifacts, transient and
permanent unit failures. Each step drives the real CLI (Prefect's ephemeral server, MLflow
SQLite, manifests) on one tiny sweep, in order."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

pytestmark = pytest.mark.slow


class Sweep:
    def __init__(self, root: Path, shared_data: Path):
        self.root = root
        cfg = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text())
        cfg["data"].update(source=str(shared_data), max_eval=24)
        cfg["model"]["max_length"] = 32
        cfg["pretrain"].update(tasks=["imdb", "mr", "qnli"], max_examples=32)
        cfg["merge"].update(groups=["all"], methods=["mera-avg"], params={})
        cfg["fewshot"].update(targets=["sst2", "rte"], inits=["adapter", "mera-avg"], shots=[4], seeds=[13, 21, 42],
                              epochs=2, min_steps=6)
        # the thread runner: the process runner's interrupts and results are tested by
        # test_bad_inputs (SIGINT) and test_determinism; this file is about lineage and retries
        cfg["run"] = {"workers": 1}
        (root / "sweep.yaml").write_text(yaml.safe_dump(cfg))
        self.env = {**os.environ, "PYTHONPATH": str(REPO)}

    def run(self, extra_env: dict | None = None, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "flows.cli", "run", "--config", "sweep.yaml"], cwd=self.root,
                              env={**self.env, **(extra_env or {})}, capture_output=True, text=True, timeout=900, **kw)

    def unit_dirs(self, stage: str = "fewshot") -> dict[str, Path]:
        return {p.parent.name: p.parent for p in (self.root / "artifacts" / stage).glob("*/manifest.json")
                if not p.parent.name.startswith(".tmp-")}  # a killed attempt's temp dir holds its manifest too

    def runs(self) -> list[tuple[str, str, str]]:
        """(mera.key, status, mera.attempt) of every unit run in MLflow."""
        with sqlite3.connect(self.root / "mlruns" / "mlflow.db") as con:
            rows = con.execute(
                "select k.value, r.status, a.value from runs r join tags k on k.run_uuid = r.run_uuid and k.key = "
                "'mera.key' left join tags a on a.run_uuid = r.run_uuid and a.key = 'mera.attempt' "
                "join tags s on s.run_uuid = r.run_uuid and s.key = 'mera.stage' where s.value != 'sweep'").fetchall()
        return rows


N_FEWSHOT = 2 * 2 * 3  # targets x inits x seeds


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, shared_data):
    return Sweep(tmp_path_factory.mktemp("resilience"), shared_data)


def _key(unit_dir: Path) -> str:
    return json.loads((unit_dir / "manifest.json").read_text())["key"]


def test_1_sigkill_during_fewshot_then_resume(sweep):
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "run", "--config", "sweep.yaml"], cwd=sweep.root,
                            env=sweep.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and len(sweep.unit_dirs()) < 2:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished_before = {k for k, status, _ in sweep.runs() if status == "FINISHED"}  # runs first: a run
    landed = sweep.unit_dirs()  # FINISHED implies its manifest landed, so every such unit is in `landed`
    done_before = set(landed)
    assert 2 <= len(done_before) < N_FEWSHOT, "the kill should land during the fewshot stage"
    landed_keys = {_key(d) for d in landed.values()}

    again = sweep.run()
    assert again.returncode == 0, again.stderr[-3000:]
    after = sweep.unit_dirs()
    assert len(after) == N_FEWSHOT
    assert not list((sweep.root / "artifacts").glob("*/.tmp-*"))  # a killed attempt's temp dir is gone, not "done"
    runs = sweep.runs()
    finished = [k for k, status, _ in runs if status == "FINISHED"]
    assert len(finished) == len(set(finished))  # no duplicate MLflow run for any unit
    new = set(finished) - finished_before
    # only the units without a manifest ran; a run the kill caught after its result landed is closed FINISHED
    assert new - landed_keys == {_key(after[n]) for n in set(after) - done_before}
    assert "RUNNING" not in {status for _, status, _ in runs}  # the attempts the kill cut short are KILLED


def test_1b_runs_left_running_are_settled_by_their_manifest(sweep):
    """A kill between a unit's result landing and its MLflow run closing, and one mid-unit:
    the next run closes the first FINISHED (its manifest names it) and the second KILLED."""
    from mera.configfile import load_config
    from mera.unit import settle_dead_runs, tracker

    cfg = load_config(sweep.root / "sweep.yaml", {"paths.root": str(sweep.root)})
    track = tracker(cfg)
    unit = next(iter(sweep.unit_dirs().values()))
    landed_run = json.loads((unit / "manifest.json").read_text())["mlflow_run_id"]
    track.client.update_run(landed_run, status="RUNNING")
    cut = track.client.create_run(track.experiment_id(), run_name="fewshot-cut-short",
                                  tags={"mera.stage": "fewshot", "mera.key": "0" * 16}).info.run_id
    assert settle_dead_runs(cfg) == {"FINISHED": 1, "KILLED": 1}
    assert track.client.get_run(landed_run).info.status == "FINISHED"
    assert track.client.get_run(cut).info.status == "KILLED"
    assert "RUNNING" not in {status for _, status, _ in sweep.runs()}


def test_2_deleted_and_corrupted_fine_tunes_are_recomputed_exactly(sweep):
    dirs = sweep.unit_dirs()
    names = sorted(dirs)
    deleted, corrupted = dirs[names[0]], dirs[names[1]]
    before = {n: (d / "manifest.json").stat().st_mtime_ns for n, d in dirs.items()}
    (deleted / "adapter" / "pytorch_adapter.bin").unlink()
    weights = corrupted / "adapter" / "pytorch_adapter.bin"
    blob = bytearray(weights.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # one byte changed, same size
    weights.write_bytes(bytes(blob))
    runs_before = len(sweep.runs())

    # the report of the sweep in this state says what is missing, and marks it
    report = subprocess.run([sys.executable, "-m", "flows.cli", "report", "--config", "sweep.yaml"], cwd=sweep.root,
                            env=sweep.env, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0 and "2 not finished yet" in report.stdout, report.stderr[-2000:]
    text = (sweep.root / "reports" / "smoke" / "report.md").read_text()
    assert f"Partial sweep: 2 of {N_FEWSHOT} planned fine-tunes have not finished" in text
    assert "## Wall time per stage (s)" in text  # the last run's, as in the report that run wrote
    marked = re.findall(r"; (\d+) missing \||missing ×(\d+)", text)  # "(N=2); 1 missing" or "missing ×3"
    assert sum(int(a or b) for a, b in marked) == 2

    again = sweep.run()
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Downloading artifacts" not in again.stderr  # no progress bar per logged model
    after = {n: (d / "manifest.json").stat().st_mtime_ns for n, d in sweep.unit_dirs().items()}
    assert {n for n in after if after[n] != before[n]} == {deleted.name, corrupted.name}
    assert len(sweep.runs()) == runs_before + 2


def test_3_a_transient_failure_is_retried_and_a_config_error_is_not_and_the_sweep_goes_on(sweep):
    """One run, two units failing on purpose: a transient error is retried once and the unit
    finishes; a config error fails its unit at once, the others finish, the run exits 1."""
    names = sorted(sweep.unit_dirs())
    transient, config = names[2], names[3]
    keys = {name: _key(sweep.unit_dirs()[name]) for name in (transient, config)}
    earlier = {name: len([r for r in sweep.runs() if r[0] == key]) for name, key in keys.items()}
    for name in keys:
        shutil.rmtree(sweep.unit_dirs()[name])
    faults = f"{transient.rsplit('-', 1)[0]}:1,{config.rsplit('-', 1)[0]}:5:config"
    again = sweep.run({"MERA_FAULT": faults})
    assert again.returncode == 1
    assert "1 unit(s) failed" in again.stderr and "injected config error" in again.stderr
    assert "Traceback" not in again.stderr

    def new_attempts(name):
        return sorted((int(a), status) for k, status, a in sweep.runs() if k == keys[name])[earlier[name]:]

    n = earlier[transient]
    assert new_attempts(transient) == [(n + 1, "FAILED"), (n + 2, "FINISHED")]  # retried once, then done
    assert [status for _, status in new_attempts(config)] == ["FAILED"]  # a user's mistake is not retried
    report = (sweep.root / "reports" / "smoke" / "report.md").read_text()
    assert "1 failed: ConfigError: injected config error" in report
    metrics = json.loads((sweep.root / "results" / "metrics.json").read_text())
    assert len(metrics["failed"]) == 1 and len(metrics["units"]) == N_FEWSHOT - 1

    status = subprocess.run([sys.executable, "-m", "flows.cli", "status", "--config", "sweep.yaml"], cwd=sweep.root,
                            env=sweep.env, capture_output=True, text=True, timeout=300)
    fewshot_line = next(ln for ln in status.stdout.splitlines() if ln.strip().startswith("fewshot"))
    assert fewshot_line.split()[1:] == [str(N_FEWSHOT - 1), "done", "1", "missing", "1", "failed"]
    assert "injected config error" in status.stdout  # the next run, without the fault, completes it (test_4)


def test_attempts_are_counted_per_unit_and_a_run_left_running_is_closed_killed(tmp_path):
    """Without any store search: the unit's attempt record numbers its runs, and the next
    attempt closes the last one KILLED when a killed worker left it RUNNING mid-sweep."""
    from mera.configfile import load_config
    from mera.unit import Unit, run_unit, tracker

    cfg = load_config(REPO / "configs" / "smoke.yaml", {"paths.root": str(tmp_path)})
    track = tracker(cfg)
    unit = Unit("fewshot", "sst2.adapter.k4.s13", {"probe": 1})

    def fails(_tmp):
        raise RuntimeError("worker lost")

    def works(_tmp):
        return {"probe": 1}, {"accuracy": 0.5}

    def run(work) -> None:
        try:
            run_unit(cfg, unit, None, {}, work)
        except RuntimeError:
            pass

    def attempts() -> list[tuple[int, str]]:
        return sorted((int(r.data.tags["mera.attempt"]), r.info.status) for r in track.find(unit.key))

    run(fails)
    first = json.loads(unit.attempts_path(cfg).read_text())["run_id"]
    track.client.update_run(first, status="RUNNING")  # as if its worker had been killed
    run(works)
    assert attempts() == [(1, "KILLED"), (2, "FINISHED")]
    second = json.loads(unit.attempts_path(cfg).read_text())["run_id"]
    shutil.rmtree(unit.path(cfg))  # deleted: the unit runs again, as attempt 3, and supersedes attempt 2
    run(works)
    assert attempts() == [(1, "KILLED"), (3, "FINISHED")]  # one FINISHED run per key
    superseded = track.client.get_run(second)
    assert superseded.info.lifecycle_stage == "deleted" and "mera.superseded_by" in superseded.data.tags
    unit.attempts_path(cfg).write_text("{not json")  # a damaged record: counting starts again, nothing fails
    shutil.rmtree(unit.path(cfg))
    run(works)  # (the last attempt unknown, attempt 3 is not superseded)
    assert attempts() == [(1, "FINISHED"), (1, "KILLED"), (3, "FINISHED")]


def test_4_a_corrupted_source_adapter_is_named_and_redone_and_superseded_in_mlflow(sweep):
    """One source adapter's weights corrupted: status names it, the run says it redoes it and
    retrains exactly that adapter (and completes the fine-tune test_3 left failed); its
    downstream units are keyed by its content, so they stay valid when the retrained weights
    are the same bytes and are redone when they are not (tests/test_inits.py checks the
    keying); MLflow keeps one FINISHED run per key."""
    stamp = {stage: {n: (d / "manifest.json").stat().st_mtime_ns for n, d in sweep.unit_dirs(stage).items()}
             for stage in ("pretrain", "merge", "fewshot")}
    name = sorted(stamp["pretrain"])[0]
    unit = sweep.unit_dirs("pretrain")[name]
    old = json.loads((unit / "manifest.json").read_text())
    weights = unit / "adapter" / "pytorch_adapter.bin"
    blob = bytearray(weights.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    weights.write_bytes(bytes(blob))
    unit_id = f"pretrain/{name.rsplit('-', 1)[0]}"

    status = subprocess.run([sys.executable, "-m", "flows.cli", "status", "--config", "sweep.yaml"], cwd=sweep.root,
                            env=sweep.env, capture_output=True, text=True, timeout=300)
    assert f"damaged {unit_id}: adapter/pytorch_adapter.bin changed since it finished" in status.stdout
    again = sweep.run()
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"redoing {unit_id}: adapter/pytorch_adapter.bin changed" in again.stdout

    after = {stage: {n: (d / "manifest.json").stat().st_mtime_ns for n, d in sweep.unit_dirs(stage).items()}
             for stage in stamp}
    assert {n for n in after["pretrain"] if after["pretrain"][n] != stamp["pretrain"].get(n)} == {name}
    new = json.loads((unit / "manifest.json").read_text())
    assert new["files"] == old["files"]  # retrained to the same bytes (seeded, one process per unit) ...
    assert after["merge"] == stamp["merge"]  # ... so nothing downstream is redone
    assert {n: t for n, t in after["fewshot"].items() if n in stamp["fewshot"]} == stamp["fewshot"]
    assert len(stamp["fewshot"]) == N_FEWSHOT - 1 and len(after["fewshot"]) == N_FEWSHOT  # the failed one, done

    with sqlite3.connect(sweep.root / "mlruns" / "mlflow.db") as con:
        twice = con.execute(
            "select k.value from runs r join tags k on k.run_uuid = r.run_uuid and k.key = 'mera.key' "
            "where r.status = 'FINISHED' and r.lifecycle_stage = 'active' group by k.value having count(*) > 1"
        ).fetchall()
        superseded = con.execute("select r.lifecycle_stage, t.value from runs r join tags t on t.run_uuid = "
                                 "r.run_uuid and t.key = 'mera.superseded_by' where r.run_uuid = ?",
                                 (old["mlflow_run_id"],)).fetchall()
    assert twice == []
    assert superseded == [("deleted", new["mlflow_run_id"])]
    from mera.configfile import load_config
    from mera.unit import tracker

    track = tracker(load_config(sweep.root / "sweep.yaml", {"paths.root": str(sweep.root)}))
    models = {m.source_run_id for m in track.client.search_logged_models([track.experiment_id()], max_results=1000)}
    assert new["mlflow_run_id"] in models and old["mlflow_run_id"] not in models  # the UI lists the current one


def _log_datasets(store: str, barrier, errors) -> None:
    from mera.tracking import Tracker, UnitRun

    tracker = Tracker(store, "race")
    for i in range(12):
        run = tracker.client.create_run(tracker.experiment_id())
        barrier.wait()  # both processes log the same new dataset at once
        try:
            UnitRun(tracker, run.info.run_id, run.info.artifact_uri).datasets(
                [{"task": f"t{i}", "split": "train", "rows": 4, "hash": "0" * 16, "context": "training"}], Path("data"))
        except Exception as exc:
            errors.put(str(exc)[:200])


def test_units_of_one_task_log_its_dataset_at_once_without_failing(tmp_path):
    """Two worker processes logging the same dataset to one SQLite store at the same moment
    race in MLflow (look up, then insert): the loser retries and finds the winner's row."""
    import multiprocessing as mp

    from mera.tracking import Tracker

    store = str(tmp_path / "mlruns")
    Tracker(store, "race").experiment_id()  # the store and experiment, before the race
    ctx = mp.get_context("spawn")
    barrier, errors = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_log_datasets, args=(store, barrier, errors)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert errors.empty(), errors.get()
    with sqlite3.connect(tmp_path / "mlruns" / "mlflow.db") as con:
        assert con.execute("select count(*) from inputs").fetchone()[0] == 24  # every run names its dataset
