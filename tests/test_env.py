"""The run's process environment: the Prefect API server `mera run` starts for itself, and
what the command leaves behind."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

# run in a fresh interpreter: Prefect reads its settings once, when first imported
_CHILD = """
import json, os, sqlite3, sys
from datetime import datetime, timedelta, timezone
from flows import server

api = server.start()
if api is None:
    print(json.dumps({"server": None}))
    sys.exit(0)

from prefect import flow, get_client, task
from prefect.settings import PREFECT_API_URL

@task
def add(x):
    return x + 1

@flow(name="env-check")
def check():
    from prefect.runtime import flow_run
    return [add(i) for i in range(3)], str(flow_run.id)

value, old = check()
_, recent = check()
long_ago = (datetime.now(timezone.utc) - timedelta(days=400)).strftime("%Y-%m-%d %H:%M:%S.%f")
with sqlite3.connect(os.path.join(os.environ["PREFECT_HOME"], "prefect.db"), timeout=30) as db:
    db.execute("update flow_run set end_time = ? where id = ?", (long_ago, old))
pruned = server.prune_flow_runs()
with get_client(sync_client=True) as client:
    left = [str(r.id) for r in client.read_flow_runs()]
print(json.dumps({"server": api.url, "api_url": PREFECT_API_URL.value(), "pid": api.process.pid,
                  "own_session": os.getsid(api.process.pid) != os.getsid(0), "value": value,
                  "pruned": pruned, "left": left, "recent": recent}))
"""


def _child(env: dict) -> dict:
    proc = subprocess.run([sys.executable, "-c", _CHILD], cwd=REPO, env={**env, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _alive(pid: int) -> bool:
    """Running (an exited process whose parent has not reaped it yet counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_run_starts_prefects_api_server_prunes_old_runs_and_stops_it_at_exit(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    out = _child({**env, "PREFECT_HOME": str(tmp_path)})
    assert out["server"] and out["api_url"] == out["server"]  # the client was pointed at it
    assert out["value"] == [1, 2, 3] and out["own_session"]  # Ctrl-C in a terminal does not reach it
    # the run that ended beyond Prefect's flow-run retention is deleted, the recent one kept
    assert out["pruned"] == 1 and out["left"] == [out["recent"]]
    deadline = time.monotonic() + 10
    while _alive(out["pid"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(out["pid"]), "the API server outlived the run"


# starts the API server as `mera run` does, then dies the way no exit handler survives
_KILLED_CHILD = """
import os, signal
from flows import server

print(server.start().process.pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_the_api_server_stops_when_its_run_was_killed(tmp_path):
    """A `mera run` killed with SIGKILL (or by the OOM killer) cannot stop its API server; the
    kernel's parent-death signal does (flows.server)."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    proc = subprocess.run([sys.executable, "-c", _KILLED_CHILD], cwd=REPO,
                          env={**env, "PYTHONPATH": str(REPO), "PREFECT_HOME": str(tmp_path)},
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    pid = int(proc.stdout.split()[0])
    try:
        deadline = time.monotonic() + 20
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(pid), "the API server outlived the run that was killed"
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_users_own_api_url_is_used_and_nothing_is_started():
    out = _child({**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api"})
    assert out == {"server": None}


def _servers_under(root: Path) -> list[int]:
    """The API servers `mera run` starts (flows.server) whose Prefect home is under root."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or b"server.api.server:create_app" not in (proc / "cmdline").read_bytes():
                continue
            env = dict(v.split(b"=", 1) for v in (proc / "environ").read_bytes().split(b"\0") if b"=" in v)
        except OSError:  # gone meanwhile
            continue
        if env.get(b"PREFECT_HOME", b"").decode().startswith(str(root)) and _alive(int(proc.name)):
            pids.append(int(proc.name))
    return pids


def _alive_in_group(pgid: int) -> list[int]:
    """Processes of the group that still run: an exited child that nobody reaps (init in a
    container may not: the process pool's resource tracker) is a zombie, not a leak."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


def _mera_alone(tmp_path, args: list[str], env: dict, timeout: float) -> tuple[int, str, str, bool]:
    """`python -m flows.cli ARGS` in tmp_path, in its own session, output to files (not pipes: a
    child left running would hold a pipe open): its exit code, stdout, stderr, and whether
    anything was left in its process group or an API server of its (in a session of its own)
    was left running (killed then)."""
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "flows.cli", *args], cwd=tmp_path,
                                env={**env, "PYTHONPATH": str(REPO)}, stdout=out, stderr=err, start_new_session=True)
        code = proc.wait(timeout=timeout)
    deadline = time.monotonic() + 5  # the pool's resource tracker ends once it reads its pipe's end
    while (alive := _alive_in_group(proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = bool(alive)
    if left:
        for pid in alive:  # shown when the test fails
            print("left in the group:", pid, (Path("/proc") / str(pid) / "cmdline").read_bytes()[:200]
                  if (Path("/proc") / str(pid)).exists() else "(gone)")
        os.killpg(proc.pid, signal.SIGKILL)  # whatever is left in its process group
    for pid in _servers_under(Path(env.get("PREFECT_HOME", tmp_path))):  # the tests' Prefect home, or the run's
        os.kill(pid, signal.SIGKILL)
        left = True
    return code, (tmp_path / "out").read_text(), (tmp_path / "err").read_text(), left


def _small_sweep(tmp_path: Path, shared_data: Path, **sections) -> Path:
    """tmp_path/sweep.yaml: the smoke sweep on two source tasks and one target."""
    cfg = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text())
    cfg["data"]["source"] = str(shared_data)
    cfg["pretrain"]["tasks"] = ["imdb", "mr"]
    cfg["fewshot"]["targets"] = ["sst2"]
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({**cfg, **sections}))
    return path


def test_mera_run_leaves_nothing_running(tmp_path, shared_data):
    """After `mera run` its output is whole, MLflow's sweep run closed, and nothing it started
    is left: not in its process group, nor the API server (in a session of its own)."""
    _small_sweep(tmp_path, shared_data)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    code, out, err, left = _mera_alone(tmp_path, ["run", "--config", "sweep.yaml", "--until", "prepare"], env, 600)
    assert code == 0, err[-3000:]
    assert "sweep 'smoke': prepare done in" in out
    assert not left
    with sqlite3.connect(tmp_path / "mlruns" / "mlflow.db") as con:
        assert con.execute("select status from runs").fetchall() == [("FINISHED",)]  # the sweep's run
        assert con.execute("pragma journal_mode").fetchone() == ("wal",)  # mera.tracking._write_ahead_log


# a command that loads a config, then one large tensor
_THP_CHILD = """
import sys
from flows.cli import main

assert main(["status", "--config", "configs/smoke.yaml", "--set", f"paths.root={sys.argv[1]}"]) == 0
import torch

x = torch.ones(64 * 2**20 // 4)  # 64 MB
rollup = open("/proc/self/smaps_rollup").read()
print(next(int(line.split()[1]) for line in rollup.splitlines() if line.startswith("AnonHugePages")))
"""


def _huge_kb(tmp_path, env: dict) -> int:
    proc = subprocess.run([sys.executable, "-c", _THP_CHILD, str(tmp_path)], cwd=REPO, capture_output=True,
                          text=True, env={**env, "PYTHONPATH": str(REPO)}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return int(proc.stdout.strip().splitlines()[-1])


def test_mera_backs_large_tensors_with_huge_pages_unless_the_user_says_no(tmp_path):
    """torch reads THP_MEM_ALLOC_ENABLE once, when it is imported: `mera` sets it before any
    command runs, and keeps a user's own value."""
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    setting = thp.read_text() if thp.is_file() else "[never]"
    mode = next(m for m in ("[always]", "[madvise]", "[never]") if m in setting)
    if mode == "[never]":
        pytest.skip("transparent huge pages are off on this host")
    # with "madvise" (the usual default) only memory torch asks for gets huge pages
    expected = {"[always]": (True, True), "[madvise]": (True, False), "[never]": (False, False)}[mode]
    huge = tuple(_huge_kb(tmp_path, e) >= 32 * 1024 for e in (env, {**env, "THP_MEM_ALLOC_ENABLE": "0"}))
    assert huge == expected  # (mera's default, the user's "0"); >= half of the tensor in huge pages


def test_torch_threads_are_set_only_when_they_differ(monkeypatch):
    """torch.set_num_threads also pins MKL to that many threads for every matrix product
    (mera.train.set_threads): a run leaves torch alone when its count is already right."""
    import torch

    from mera.train import set_threads

    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    current = torch.get_num_threads()
    set_threads(current)
    assert calls == []
    set_threads(current + 1)
    assert calls == [current + 1]
