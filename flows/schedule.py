"""Scheduled sweeps: a Prefect deployment of the benchmark with a cron schedule.

    prefect server start                                    # terminal 1: the API and UI (127.0.0.1:4200)
    export PREFECT_API_URL=http://127.0.0.1:4200/api        # terminal 2
    mera schedule --config configs/default.yaml --cron "0 3 * * 1"

`mera schedule` registers the deployment and serves it: keep that process running; it starts
each scheduled run (a resume: finished units are skipped). prefect.yaml declares the same
deployment for `prefect deploy` with a work pool and `prefect worker start`. Either way a
scheduled run is `mera run` itself: the sweep's lock, the checks, the environment and the
overrides are the ones a run from the terminal gets.
"""

from __future__ import annotations

import collections
import signal
import subprocess
import sys
from pathlib import Path

from prefect import flow

from mera.config import ConfigError
from mera.configfile import load_config, parse_override


class SweepFailed(RuntimeError):
    """A scheduled `mera run` that refused to start (a mistake, a held lock) or left units failed."""


@flow(name="benchmark-from-file", log_prints=True)
def benchmark_from_file(config_path: str, until: str = "report", overrides: list[str] | None = None) -> list[str]:
    """`mera run --config <config_path> --until <until> --set <override>...` in a child process,
    its output in this flow run's logs: the config is read at run time, so a schedule picks up
    edits. Fails with mera's own message when the run refuses or units fail."""
    cmd = [sys.executable, "-m", "flows.cli", "run", "--config", config_path, "--until", until]
    for override in overrides or []:
        cmd += ["--set", override]
    tail: collections.deque[str] = collections.deque(maxlen=40)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    try:
        for line in proc.stdout:
            print(line.rstrip())
            tail.append(line.rstrip())
        code = proc.wait()
    finally:  # this flow run cancelled or interrupted: stop the sweep as Ctrl-C would
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
    if code != 0:
        said = [line for line in tail if line.startswith("mera: ")] or list(tail)[-5:]
        raise SweepFailed(f"mera run exited {code}: " + " | ".join(said))
    return list(tail)


def deployment(config_path: str | Path, cron: str, until: str = "report", overrides: list[str] | None = None):
    """A deployment of `benchmark_from_file` for one config and its overrides, on a cron schedule."""
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=cron)
    except ValueError:
        raise ConfigError(f"--cron {cron!r} is not a cron expression; accepted: five fields, e.g. '0 3 * * 1' "
                          "(03:00 every Monday)") from None
    path = Path(config_path).resolve()
    overrides = list(overrides or [])
    cfg = load_config(path, dict(parse_override(s) for s in overrides))  # fail now, not at 3 a.m.
    return benchmark_from_file.to_deployment(
        name=f"mera-{cfg.name}", cron=cron,
        parameters={"config_path": str(path), "until": until, "overrides": overrides},
        description=f"mera-bench sweep {cfg.name!r} ({path})", tags=["mera-bench", cfg.name])
