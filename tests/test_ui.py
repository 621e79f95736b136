"""`mera ui` as a person runs it: the MLflow UI answers, and SIGTERM (a service manager, a
`kill`) ends it with nothing left serving the port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.conftest import REPO, free_port


def _serving(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


def _kill_whatever_serves(port: int) -> None:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if f"{port}".encode() in cmdline.read_bytes() and b"mlflow" in cmdline.read_bytes():
                os.kill(int(cmdline.parent.name), signal.SIGKILL)
        except OSError:
            pass


def test_mera_ui_serves_the_store_and_sigterm_ends_its_server(tmp_path):
    port = free_port()
    with open(tmp_path / "out", "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "ui", "--config",
                                 str(REPO / "configs" / "smoke.yaml"), "--set", f"paths.root={tmp_path}",
                                 "--port", str(port)], cwd=tmp_path,
                                env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not _serving(port):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "out").read_text()[-3000:]
            time.sleep(1)
        os.kill(proc.pid, signal.SIGTERM)  # mera itself, not its process group
        proc.wait(timeout=60)
        deadline = time.monotonic() + 20
        while _serving(port) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _serving(port), "the MLflow server outlived `mera ui`"
    finally:
        if proc.poll() is None:
            proc.kill()
        _kill_whatever_serves(port)
