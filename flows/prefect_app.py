"""The app of the Prefect API server a `mera run` starts (flows/env.py: ApiServer):
Prefect's own, as its ephemeral mode builds it (`prefect.server.api.server:create_app`),
made quieter for the machine it shares with the run's training:

- without Prefect's background worker (docket), which runs the server's periodic services
  and woke the idle server ~115 of its ~155 times a second (its loops poll every 100-250 ms);
  a sweep's training beside the server slowed with each wake-up. What records the run is
  not in it (task-run recorder, event persister: Prefect's services, kept). What is left
  out is Prefect's upkeep for long-lived servers (the event vacuum, automations) and the
  background work of a few API calls (deletions): a Prefect server you start does those
  (README: Servers);
- with the objects it was built from frozen out of the garbage collector's reach, as
  `flows.env.freeze_heap` does for the run (its full collections walked them: ~0.3 s of CPU
  per smoke sweep).

Imports nothing of mera's (flows.env would bring torch into the server)."""

from __future__ import annotations

import gc
from contextlib import asynccontextmanager


@asynccontextmanager
async def no_background_worker(docket, ephemeral: bool = False, webserver_only: bool = False):
    """Stands in for `prefect.server.api.server.background_worker` (same arguments)."""
    yield


def create_app():
    import prefect.server.api.server as server

    server.background_worker = no_background_worker
    app = server.create_app()
    gc.freeze()
    return app
