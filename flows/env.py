"""Process environment for a run, set before prefect/mlflow/HF are imported.

Everything a run writes goes under the project (configurable in the config's `paths`);
a user's own PREFECT_HOME / PREFECT_API_URL / MLflow server settings are respected.
"""

from __future__ import annotations

import os
import threading
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


def preload() -> None:
    """Import the libraries the units use, once, in this thread, before anything fans out:
    `adapters` and `transformers` resolve names lazily and race when two threads import
    them at once."""
    import ot  # noqa: F401

    import mera.calibrate  # noqa: F401
    import mera.evaluate  # noqa: F401
    import mera.fewshot  # noqa: F401
    import mera.merge.ot  # noqa: F401
    import mera.models  # noqa: F401


_GC_HELD: list[bool] = []
_FROZEN: list[bool] = []


def hold_gc() -> None:
    """No garbage collection from now until `freeze_heap()` (or `release_gc()`): the start of
    a run imports ~6,000 modules (torch, transformers, Prefect, MLflow), and the collector's
    full collections (one each time the surviving objects grew by a quarter) walked the
    growing heap 9 times for ~30 objects of garbage each; `mera run` spent ~2.0 s of its start
    in them, the plain loop of bench/overhead.py ~1.2 s (measured with gc.callbacks, up to the
    freeze)."""
    import gc

    if gc.isenabled() and not _GC_HELD:
        gc.disable()
        _GC_HELD.append(True)


def release_gc() -> None:
    """Collect as usual again after `hold_gc()` (a no-op otherwise)."""
    import gc

    if _GC_HELD:
        _GC_HELD.clear()
        gc.enable()


def freeze_heap() -> None:
    """Take every object alive now (the imported libraries' modules, classes, functions,
    caches) out of the garbage collector's reach, once the imports are done and before the
    work, and end a `hold_gc()`. A sweep's units allocate many objects, so the collector walks
    the whole heap a dozen times in a smoke sweep; with torch, transformers, Prefect and MLflow
    loaded that walk took ~0.25 s each time (4.0 s of a `mera run`, measured with
    gc.callbacks). Frozen objects are never freed, so this freezes once per process (a served
    schedule runs many flows), without a collection first: the imports leave little garbage,
    and a collection would cost as much as one of the walks it saves."""
    import gc

    if not _FROZEN:
        gc.freeze()
        _FROZEN.append(True)
    release_gc()


# threads still importing what the flow's first lines need (WarmUp's MLflow start), joined by imports_done()
_IMPORTING: list[threading.Thread] = []


def imports_done() -> None:
    """The flow's first line: wait for the imports WarmUp still runs (flow_starts), then
    freeze the heap; everything the units use is imported by then."""
    while _IMPORTING:
        _IMPORTING.pop().join()
    freeze_heap()


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
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # no usage reports from the run's tools
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "DVC_NO_ANALYTICS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    if cfg.model.name == BUNDLED_MODEL and cfg.data.source != "hub":
        # nothing comes from the hub: without these a hub lookup hangs ~30-50 s offline
        defaults.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


# the settings of the API server `mera run` starts, where the user has not set them (a Prefect
# server you start keeps Prefect's defaults), for CPU the run's training shares:
# - its task-run recorder writes task-run states in batches of up to 100 (or every 5 s, and all
#   at its stop) instead of one transaction per state; 75 tasks cost the server 4.5-5.0 s of CPU
#   instead of 6.5-7.2 s;
# - no automations: their reactive half read every event (~20 % of the server's CPU per task:
#   200 no-op tasks, two alternating pairs, 2.46 -> 1.95 s and 1.89 -> 1.56 s), and their
#   proactive half and the actions they trigger need the background worker this server runs
#   without (flows/prefect_app.py)
SERVER_DEFAULTS = {"PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "100",
                   "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "false"}


class ApiServer:
    """Prefect's API server for one `mera run`, when the user has none of their own (no
    PREFECT_API_URL in the environment or the active profile): the app Prefect's own
    ephemeral mode runs (`prefect.server.api.server:create_app`, UI off, ephemeral services),
    made quieter (flows/prefect_app.py, SERVER_DEFAULTS), started by us rather than by
    Prefect's client, because:

    - the client never imports the server's code (~2 s of CPU that competed with the
      flow's imports on a small machine); it is told the URL like any user's server;
    - the socket is bound here and handed over (`uvicorn --fd`): no free-port race;
    - its first answer is slow (~0.5 s: the app's lazy set-up), so it is asked once for
      its version, the client's first call, while the flow's libraries still import;
    - the run's events reach it over a local websocket without compression (uvicorn's
      default compresses each message: CPU on both ends, for nothing on a loopback).

    Stopped at exit (registered before Prefect's own exit hooks, so it outlives their
    final event flush). It runs in a session of its own: Ctrl-C in a terminal signals the
    whole foreground process group, and a server that took the SIGINT too shut down under
    the interrupted run, whose last state updates then failed (a traceback after ~70 s of
    retries, the flow run left RUNNING). A run killed outright is watched for by the
    server itself (flows/prefect_app.py)."""

    def __init__(self):
        import atexit
        import socket
        import subprocess
        import sys
        import threading

        # stop() may run (at exit) while another thread is still spawning the server: it waits
        # for the spawn, then stops it, so no server outlives the run
        self.process, self._lock, self._stopped = None, threading.Lock(), False
        atexit.register(self.stop)
        # its output goes to a log, not to the run's stdout/stderr: a caller reading those
        # would otherwise wait on a server that was still starting when the run ended
        self.log = Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser() / "api-server.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)  # (the server would make it for its database)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)  # connections wait in the backlog until the app serves them
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}/api"
        env = {**SERVER_DEFAULTS, **os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
               "PREFECT__SERVER_FINAL": "1"}
        env.pop("PREFECT_API_URL", None)
        app_dir = str(Path(__file__).resolve().parents[1])  # where flows.prefect_app is
        try:
            with self._lock, open(self.log, "a") as log:
                if self._stopped:
                    raise RuntimeError("the run is ending: Prefect's API server is not started")
                self.process = subprocess.Popen(
                    [sys.executable, "-m", "uvicorn", "--app-dir", app_dir,
                     "--factory", "flows.prefect_app:create_app", "--fd", str(sock.fileno()),
                     "--log-level", "error", "--lifespan", "on", "--ws-per-message-deflate", "false"],
                    env=env, pass_fds=(sock.fileno(),), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                    start_new_session=True)
        finally:
            sock.close()  # the server holds its own copy

    def wait_healthy(self, timeout: float) -> None:
        import time
        import urllib.request

        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"Prefect's API server exited with code {self.process.returncode} on start "
                                   f"(its output: {self.log})")
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

        with self._lock:
            self._stopped = True
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


_STARTED: list[ApiServer] = []

# Prefect is first imported by two threads of `mera run` (WarmUp's and the main one): Prefect's
# modules import each other, and two threads importing them at once can each wait on a module
# the other is importing; Python then hands one of them a half-initialised module ("cannot import
# name 'get_current_settings' from partially initialized module 'prefect.settings'"). Both
# import it under this lock (the second one finds it imported).
PREFECT_IMPORT = threading.Lock()


def start_api_server(ending=lambda: False) -> ApiServer | None:
    """Start Prefect's API server for this run unless the user has one (their
    PREFECT_API_URL, from the environment or their Prefect profile, is used as it is).
    Prefect's settings are read from the environment once: the URL is set there and the
    settings re-read, before any flow or client exists. The server is spawned before Prefect is
    imported here, so its start overlaps that import; when `ending()` says the run is over by
    then, Prefect is not imported (an import cut by the exit prints errors) and None returned."""
    if os.environ.get("PREFECT_API_URL"):
        return None
    server = ApiServer()
    try:
        with PREFECT_IMPORT:
            if ending():
                server.stop()
                return None
            from prefect.context import refresh_global_settings_context
            from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

        if PREFECT_API_URL.value():  # from the user's Prefect profile
            server.stop()
            return None
        server.wait_healthy(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())
    except BaseException:
        server.stop()
        raise
    os.environ["PREFECT_API_URL"] = server.url
    refresh_global_settings_context()
    _STARTED.append(server)
    return server


def own_server() -> bool:
    """Whether this process started the Prefect API server its flows report to."""
    return bool(_STARTED)


def _prefect_db_exists() -> bool:
    """Prefect's default database (SQLite in its home) exists: starting the server then
    creates nothing but its log. A database configured elsewhere counts as not known to exist."""
    if any(k in os.environ for k in ("PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_SERVER_DATABASE_CONNECTION_URL")):
        return False
    return (Path(os.environ["PREFECT_HOME"]) / "prefect.db").is_file()


class WarmUp:
    """Start what the flow will need in background threads: Prefect's API server (~2.5 s here,
    ~15 s on a new Prefect home) while the run's checks go on and the flow's libraries (torch,
    transformers, ...) are imported, and the MLflow store (~0.5 s of imports, ~2 s when new)
    while the flow starts.

    `WarmUp(cfg)` starts the server at once when Prefect's database exists already (it then
    creates nothing, so a mistake the checks find still leaves nothing behind; the server is
    stopped at exit); `after_checks()` starts it otherwise. `flow_starts()`, just before the
    flow, starts MLflow and waits for the server (the flow's client needs its URL); the flow's
    first line waits for MLflow (`imports_done()`). Its imports thus use the time the run
    waits on the server: for its start, then ~0.4 s for its answers while Prefect starts the
    flow (which imports none of the same modules); imported beside the flow's own imports, they
    took turns with them for the GIL. A failure here is ignored: the flow then starts them
    itself (Prefect's own ephemeral server) and reports what goes wrong."""

    def __init__(self, cfg: SweepConfig):
        self.cfg = cfg
        self.threads = []
        self._ending = False
        if _prefect_db_exists():
            self._start(self._server)

    def after_checks(self) -> None:
        if not self.threads:
            self._start(self._server)

    def flow_starts(self) -> None:
        waiting = list(self.threads)
        _IMPORTING.append(self._start(self._mlflow))
        for t in waiting:
            t.join()

    def _server(self) -> None:
        start_api_server(ending=lambda: self._ending)

    def close(self) -> None:
        """The run is over (or ends early, at a mistake): a thread not yet importing Prefect
        leaves it, one importing it finishes first."""
        with PREFECT_IMPORT:
            self._ending = True

    def _start(self, fn) -> threading.Thread:
        thread = threading.Thread(target=self._quietly, args=(fn,), name=f"mera-warm-up-{len(self.threads)}",
                                  daemon=True)
        thread.start()
        self.threads.append(thread)
        return thread

    @staticmethod
    def _quietly(fn) -> None:
        try:
            fn()
        except Exception:  # noqa: BLE001 - see the class docstring
            pass

    def _mlflow(self) -> None:
        from mera.units import tracker

        tracker(self.cfg).experiment_id()
