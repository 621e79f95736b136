"""Scheduled sweeps: a Prefect deployment of the benchmark flow with a cron schedule.

    prefect server start                                    # terminal 1: the API and UI (127.0.0.1:4200)
    export PREFECT_API_URL=http://127.0.0.1:4200/api        # terminal 2
    mera schedule --config configs/default.yaml --cron "0 3 * * 1"

`mera schedule` registers the deployment and serves it: keep that process running; it starts
each scheduled run (a resume: finished units are skipped). prefect.yaml declares the same
deployment for `prefect deploy` with a work pool and `prefect worker start`.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from mera.config import load_config


@flow(name="benchmark-from-file", log_prints=True)
def benchmark_from_file(config_path: str, until: str = "report") -> dict:
    """The benchmark flow on a config file read at run time, so a schedule picks up edits."""
    from flows.benchmark import run

    return run(load_config(config_path), until)


def deployment(config_path: str | Path, cron: str, until: str = "report"):
    """A deployment of `benchmark_from_file` for one config, on a cron schedule."""
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=cron)
    except ValueError:
        from mera.config import ConfigError

        raise ConfigError(f"--cron {cron!r} is not a cron expression; accepted: five fields, e.g. '0 3 * * 1' "
                          "(03:00 every Monday)") from None
    path = Path(config_path).resolve()
    cfg = load_config(path)  # fail now, not at 3 a.m.
    return benchmark_from_file.to_deployment(
        name=f"mera-{cfg.name}", cron=cron, parameters={"config_path": str(path), "until": until},
        description=f"mera-bench sweep {cfg.name!r} ({path})", tags=["mera-bench", cfg.name])
