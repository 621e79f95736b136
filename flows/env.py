"""Process environment for a run, set before prefect/mlflow/HF are imported.

Everything a run writes goes under the project (configurable in the config's `paths`);
a user's own PREFECT_HOME / PREFECT_API_URL / MLflow server settings are respected.
"""

from __future__ import annotations

import os
from pathlib import Path

from mera.config import BUNDLED_MODEL, ConfigError, SweepConfig

# read by torch once, when it is first imported (loading a config imports it: the merge
# registry checks method names): CPU tensors of 2 MB and more are backed by transparent huge
# pages, so a smoke sweep takes 0.5 M page faults instead of 3.0 M (BENCHMARKS.md)
TORCH_DEFAULTS = {"THP_MEM_ALLOC_ENABLE": "1"}


def before_torch() -> None:
    """The process settings torch reads at start; a user's own values are kept."""
    for key, value in TORCH_DEFAULTS.items():
        os.environ.setdefault(key, value)


def configure(cfg: SweepConfig) -> None:
    home = cfg.paths.resolve("prefect_home")
    try:  # Prefect's SQLite needs the folder; a missing one shows up as a 2-minute server timeout
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"paths.prefect_home {str(home)!r} cannot be created ({exc.strerror}); "
                          "set paths.root or paths.prefect_home to a writable directory") from None
    defaults = {
        "PREFECT_HOME": str(home),
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(home / "results"),
        "PREFECT_LOCAL_STORAGE_PATH": str(home / "storage"),
        # a fresh ephemeral server needs ~15 s here; the default timeout is 20 s
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "DVC_NO_ANALYTICS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    if cfg.model.name == BUNDLED_MODEL and cfg.data.source != "hub":
        # nothing comes from the hub: without these a hub lookup hangs ~30-50 s offline
        defaults.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


class ApiServer:
    """Prefect's API server for one `mera run`, when the user has none of their own (no
    PREFECT_API_URL in the environment or the active profile): the same app Prefect's own
    ephemeral mode runs (`prefect.server.api.server:create_app`, UI off, ephemeral services),
    started by us rather than by Prefect's client, because:

    - the client never imports the server's code (~2 s of CPU that competed with the
      flow's imports on a small machine); it is told the URL like any user's server;
    - the socket is bound here and handed over (`uvicorn --fd`): no free-port race;
    - its first answer is slow (~0.5 s: the app's lazy set-up), so it is asked once for
      its version, the client's first call, while the flow's libraries still import.

    Stopped at exit (registered before Prefect's own exit hooks, so it outlives their
    final event flush)."""

    def __init__(self):
        import atexit
        import socket
        import subprocess
        import sys

        import prefect

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)  # connections wait in the backlog until the app serves them
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}/api"
        env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
               "PREFECT__SERVER_FINAL": "1"}
        env.pop("PREFECT_API_URL", None)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(prefect.__file__).parents[1]),
                 "--factory", "prefect.server.api.server:create_app", "--fd", str(sock.fileno()),
                 "--log-level", "error", "--lifespan", "on"],
                env=env, pass_fds=(sock.fileno(),), stdin=subprocess.DEVNULL)
        finally:
            sock.close()  # the server holds its own copy
        atexit.register(self.stop)

    def wait_healthy(self, timeout: float) -> None:
        import time
        import urllib.request

        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"Prefect's API server exited with code {self.process.returncode} on start")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"Prefect's API server did not answer at {self.url} within {timeout:.0f} s")
            time.sleep(0.05)
        try:  # see the class docstring
            urllib.request.urlopen(f"{self.url}/admin/version", timeout=30).close()
        except OSError:
            pass

    def stop(self) -> None:
        import subprocess

        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_api_server() -> ApiServer | None:
    """Start Prefect's API server for this run unless the user has one (their
    PREFECT_API_URL, from the environment or their Prefect profile, is used as it is).
    Prefect's settings are read from the environment once: the URL is set there and the
    settings re-read, before any flow or client exists."""
    from prefect.context import refresh_global_settings_context
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    if PREFECT_API_URL.value():
        return None
    server = ApiServer()
    try:
        server.wait_healthy(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())
    except BaseException:
        server.stop()
        raise
    os.environ["PREFECT_API_URL"] = server.url
    refresh_global_settings_context()
    return server


class WarmUp:
    """Start what the flow will need, Prefect's API server (~3 s here, ~15 s on a new
    Prefect home) and the MLflow store (~2 s when new), in background threads while the
    flow's libraries (torch, transformers, ...) are imported. A failure here is ignored: the
    flow then starts them itself (Prefect's own ephemeral server) and reports what goes wrong."""

    def __init__(self, cfg: SweepConfig):
        import threading

        self.cfg = cfg
        self.threads = [threading.Thread(target=self._quietly, args=(fn,), name=f"mera-warm-up-{i}", daemon=True)
                        for i, fn in enumerate((start_api_server, self._mlflow))]
        for t in self.threads:
            t.start()

    @staticmethod
    def _quietly(fn) -> None:
        try:
            fn()
        except Exception:  # noqa: BLE001 - see the class docstring
            pass

    def _mlflow(self) -> None:
        from mera.units import tracker

        tracker(self.cfg).experiment_id()

    def wait(self) -> None:
        for t in self.threads:
            t.join()
