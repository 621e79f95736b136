"""Schedules through the real components, set up as a person would: `prefect server start`
on 127.0.0.1 with its own home, a process work pool, `prefect deploy` of the benchmark flow on
a cron schedule due within a minute and `prefect worker start`; and `mera schedule` serving
its own deployment. Nothing is called in-process: every step is the command a user types."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, free_port, wait_healthy

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A Prefect server of its own; yields the environment of a user's shell pointed at it."""
    root = tmp_path_factory.mktemp("prefect-server")
    (root / "home").mkdir()
    url = f"http://127.0.0.1:{free_port()}/api"
    # a user's shell: none of the tests' own Prefect settings, a home of its own
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(HOME=str(root / "home"), PREFECT_API_URL=url, PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PYTHONPATH=str(REPO))
    server_env = {**env, "PREFECT_HOME": str(root / "server"),
                  "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5"}  # look for due schedules every 5 s, not 60
    with open(root / "server.log", "w") as log:
        proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                                 "--port", url.split(":")[-1].split("/")[0]],
                                env=server_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(f"{url}/health", proc, root / "server.log", 180)
        yield env, root
    finally:
        _stop(proc)
    assert "Can't evaluate bulk DML" not in (root / "server.log").read_text()  # the SQLAlchemy 2.1 failure


def prefect(env: dict, *args: str, cwd: Path = REPO) -> str:
    proc = subprocess.run([str(BIN / "prefect"), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-2000:])
    return proc.stdout


def tiny_sweep(root: Path, name: str, shared_data: Path) -> Path:
    cfg = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text())
    cfg["name"] = name
    cfg["data"].update(source=str(shared_data), max_eval=24)
    cfg["model"]["max_length"] = 32
    cfg["pretrain"].update(tasks=["imdb", "mr"], max_examples=32)
    cfg["merge"].update(groups=["all"], methods=["mera-avg"], params={})
    cfg["fewshot"].update(targets=["sst2"], inits=["adapter", "mera-avg"], shots=[4], seeds=[13], epochs=1, min_steps=2)
    cfg["paths"] = {"root": str(root)}
    root.mkdir(parents=True, exist_ok=True)
    (root / "sweep.yaml").write_text(yaml.safe_dump(cfg))
    return root / "sweep.yaml"


def flow_runs(env: dict, deployment: str) -> list:
    code = ("import json, sys\n"
            "from prefect.client.orchestration import get_client\n"
            "from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName\n"
            "with get_client(sync_client=True) as c:\n"
            "    by_name = DeploymentFilter(name=DeploymentFilterName(any_=[sys.argv[1]]))\n"
            "    runs = c.read_flow_runs(deployment_filter=by_name)\n"
            "print(json.dumps([{'tags': r.tags, 'state': r.state.type.value if r.state else None,\n"
            "                   'message': r.state.message if r.state else None} for r in runs]))\n")
    proc = subprocess.run([sys.executable, "-c", code, deployment], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def test_the_scheduler_starts_deployed_sweeps_and_a_worker_runs_them_as_mera_run_does(server, shared_data, tmp_path):
    env, root = server
    ok = tiny_sweep(tmp_path / "ok", "e2e-ok", shared_data)
    locked = tiny_sweep(tmp_path / "locked", "e2e-locked", shared_data)
    prefect(env, "work-pool", "create", "mera-e2e", "--type", "process")
    for name, config in (("ok", ok), ("locked", locked)):  # due at the next minute
        prefect(env, "--no-prompt", "deploy", "flows/schedule.py:benchmark_from_file", "--name", name,
                "--pool", "mera-e2e", "--cron", "* * * * *", "--param", f"config_path={config}")
    (locked.parent / "artifacts").mkdir()
    with open(locked.parent / "artifacts" / ".lock-e2e-locked", "a+") as held:  # what a running `mera run` holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("pid 4242, since now")
        held.flush()
        with open(tmp_path / "worker.log", "w") as log:
            worker = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", "mera-e2e"], env=env,
                                      cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 420
            while time.monotonic() < deadline:
                done = {name: [r for r in flow_runs(env, name) if r["state"] in ("COMPLETED", "FAILED", "CRASHED")]
                        for name in ("ok", "locked")}
                if all(done.values()):
                    break
                time.sleep(5)
        finally:
            _stop(worker)
    logs = (tmp_path / "worker.log").read_text()[-4000:]
    assert done["ok"] and done["locked"], logs
    first = done["ok"][0]
    assert "auto-scheduled" in first["tags"] and first["state"] == "COMPLETED", (first, logs)
    # the run was `mera run` in the project: its report, MLflow store and Prefect results are there
    assert (ok.parent / "reports" / "e2e-ok" / "report.md").is_file()
    assert (ok.parent / "mlruns" / "mlflow.db").is_file()
    assert any((ok.parent / ".prefect" / "results").iterdir())
    refused = done["locked"][0]
    assert "auto-scheduled" in refused["tags"] and refused["state"] == "FAILED", (refused, logs)
    assert "sweep 'e2e-locked' is already running (pid 4242" in refused["message"], refused
    assert sorted(p.name for p in (locked.parent / "artifacts").iterdir()) == [".lock-e2e-locked"]
    assert not (locked.parent / "mlruns").exists()  # it changed nothing


def test_mera_schedule_serves_the_overrides_and_leaves_the_schedule_paused_as_it_says(server, shared_data, tmp_path):
    env, _ = server
    config = tiny_sweep(tmp_path, "e2e-served", shared_data)
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "schedule", "--config", str(config), "--cron",
                             "0 3 * * 1", "--set", "fewshot.seeds=[5]"], env=env, cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    code = ("import json, sys\n"
            "from prefect.client.orchestration import get_client\n"
            "with get_client(sync_client=True) as c:\n"
            "    d = c.read_deployment_by_name('benchmark-from-file/mera-e2e-served')\n"
            "print(json.dumps({'parameters': d.parameters, 'paused': d.paused}))\n")

    def read() -> dict | None:
        got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        return json.loads(got.stdout) if got.returncode == 0 else None

    try:
        deadline = time.monotonic() + 120
        while (dep := read()) is None or dep["paused"]:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate(timeout=5)
            time.sleep(2)
        assert dep["parameters"]["overrides"] == ["fewshot.seeds=[5]"]
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
        out, err = proc.communicate(timeout=60)
    assert "pauses the schedule" in out, (out, err[-2000:])
    assert read()["paused"] is True  # as announced

