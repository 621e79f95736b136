"""The app of the Prefect API server a `mera run` starts (flows/env.py: ApiServer):
Prefect's own, as its ephemeral mode builds it (`prefect.server.api.server:create_app`),
made quieter for the machine it shares with the run's training, and tied to the run:

- without Prefect's background worker (docket), which runs the server's periodic services
  and woke the idle server ~115 of its ~155 times a second (its loops poll every 100-250 ms);
  a sweep's training beside the server slowed with each wake-up. What records the run is
  not in it (task-run recorder, event persister: Prefect's services, kept). What is left
  out is Prefect's upkeep for long-lived servers (the event vacuum, automations) and the
  background work of a few API calls (deletions): a Prefect server you start does those
  (README: Servers);
- without garbage collection while Prefect's server code is imported (5 full collections
  of the growing heap: ~0.4 s of its ~2.8 s start), and with the objects it was built from
  then frozen out of the collector's reach, as `flows.env.hold_gc` and `freeze_heap` do for
  the run (its full collections walked them: ~0.3 s of CPU per smoke sweep);
- and it stops itself when the `mera run` that started it is gone without stopping it
  (killed with SIGKILL, or by the kernel's OOM killer): it would otherwise live on, holding
  its port and Prefect's database, one more with each such run.

Imports nothing of mera's (flows.env would bring torch into the server)."""

from __future__ import annotations

import gc
import os
import signal
import threading
import time
from contextlib import asynccontextmanager

gc.disable()  # until create_app() has built the app (this module is imported by uvicorn, to call it)


@asynccontextmanager
async def no_background_worker(docket, ephemeral: bool = False, webserver_only: bool = False):
    """Stands in for `prefect.server.api.server.background_worker` (same arguments)."""
    yield


def _stop_when_orphaned(parent: int) -> None:
    """Ask uvicorn to shut down (as at the run's own stop: SIGTERM, so what the task-run
    recorder still holds is written) once this process's parent has changed, i.e. died."""
    while os.getppid() == parent:
        time.sleep(2)
    os.kill(os.getpid(), signal.SIGTERM)


def create_app():
    import prefect.server.api.server as server

    server.background_worker = no_background_worker
    app = server.create_app()
    gc.freeze()
    gc.enable()
    threading.Thread(target=_stop_when_orphaned, args=(os.getppid(),), name="mera-parent-watch", daemon=True).start()
    return app
