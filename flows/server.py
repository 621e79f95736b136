"""Prefect's own API server for one `mera run`, when the user points at none (PREFECT_API_URL
in the environment or their Prefect profile). It is the app Prefect's ephemeral mode runs,
unchanged (`prefect.server.api.server:create_app`); it is started here rather than by
Prefect's client for two things a run relies on:

- it runs in a session of its own: Ctrl-C in a terminal reaches the run, which records its
  end, and not the server under it;
- it dies with the run (Linux's parent-death signal): a SIGKILLed run leaves no server behind.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

# Prefect settings for a server that lives as long as one run, where the user set none: the
# task-run recorder writes states in batches instead of one transaction each, and automations
# (which read every event) are off: the server's CPU is taken from the run's training
DEFAULTS = {"PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "100",
            "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "false"}


class ApiServer:
    def __init__(self):
        import prefect

        self.log = Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser() / "api-server.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))  # bound here and handed over: no free-port race
        sock.listen(128)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}/api"
        env = {**DEFAULTS, **os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
               "PREFECT__SERVER_FINAL": "1"}
        env.pop("PREFECT_API_URL", None)
        try:
            with open(self.log, "a") as log:
                self.process = subprocess.Popen(
                    [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(prefect.__file__).parents[1]),
                     "--factory", "prefect.server.api.server:create_app", "--fd", str(sock.fileno()),
                     "--log-level", "error", "--lifespan", "on"],
                    env=env, pass_fds=(sock.fileno(),), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                    start_new_session=True, preexec_fn=_die_with(os.getpid()))
        finally:
            sock.close()  # the server holds its own copy

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"Prefect's API server exited with code {self.process.returncode} on start "
                                   f"(its output: {self.log})")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"Prefect's API server did not answer at {self.url} within {timeout:.0f} s")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _die_with(parent: int):
    """The server's pre-exec hook: SIGTERM when the run that spawned it dies (Linux only)."""

    def hook() -> None:
        if sys.platform.startswith("linux"):
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
            if os.getppid() != parent:  # the run died before the hook ran
                os._exit(1)

    return hook


def spawn() -> ApiServer | None:
    """Start the run's API server unless the user has one, and stop it at exit (registered
    before Prefect's own exit hooks, so it outlives their final flush). It boots in its own
    process while the run goes on; `ready()` waits for it."""
    import atexit

    from prefect.settings import PREFECT_API_URL

    if os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value():
        return None
    server = ApiServer()
    atexit.register(server.stop)
    return server


def ready(server: ApiServer) -> ApiServer:
    """Wait until the spawned server answers and point Prefect's settings at it (before any
    flow or client exists)."""
    from prefect.context import refresh_global_settings_context
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    server.wait_healthy(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())
    os.environ["PREFECT_API_URL"] = server.url
    refresh_global_settings_context()
    return server


def start() -> ApiServer | None:
    """`spawn()` then `ready()`: the run's API server, up, unless the user has one."""
    server = spawn()
    return ready(server) if server is not None else None


def database_exists() -> bool:
    """Prefect's default database (SQLite in its home) exists: starting the server then
    creates nothing a user's mistake would leave behind."""
    if any(k in os.environ for k in ("PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_SERVER_DATABASE_CONNECTION_URL")):
        return False
    return (Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser() / "prefect.db").is_file()



def prune_flow_runs() -> int:
    """Delete the flow runs that ended longer ago than Prefect's flow-run retention
    (server.services.db_vacuum.retention_period, 90 days unless set), with their task runs:
    the server of a run is ephemeral, and Prefect's flow-run vacuum runs only in a long-lived
    one, so the run's database would otherwise grow run after run. Returns how many."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterEndTime
    from prefect.settings import get_current_settings

    before = datetime.now(UTC) - get_current_settings().server.services.db_vacuum.retention_period
    old = FlowRunFilter(end_time=FlowRunFilterEndTime(before_=before))
    n = 0
    with get_client(sync_client=True) as client:
        while runs := client.read_flow_runs(flow_run_filter=old, limit=200):
            for run in runs:
                client.delete_flow_run(run.id)
            n += len(runs)
    return n
