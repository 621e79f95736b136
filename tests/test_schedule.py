"""Scheduled sweeps: the deployment `mera schedule` serves, and prefect.yaml's."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from mera.config import ConfigError
from mera.configfile import load_config
from tests.conftest import REPO


def test_deployment_carries_the_cron_schedule_and_parameters():
    from flows.schedule import deployment

    config = REPO / "configs" / "quick.yaml"
    dep = deployment(config, "0 3 * * 1", until="fewshot", overrides=["fewshot.seeds=[1, 2]"])
    assert dep.name == "mera-quick" and "quick" in dep.tags
    assert [s.schedule.cron for s in dep.schedules] == ["0 3 * * 1"]
    assert dep.parameters == {"config_path": str(config.resolve()), "until": "fewshot",
                              "overrides": ["fewshot.seeds=[1, 2]"]}
    assert dep.flow_name == "benchmark-from-file"


def test_a_bad_cron_or_config_fails_before_anything_is_registered():
    from flows.schedule import deployment

    with pytest.raises(ConfigError, match="--cron 'every monday' is not a cron expression"):
        deployment(REPO / "configs" / "quick.yaml", "every monday")
    with pytest.raises(ConfigError, match="does not exist"):
        deployment(REPO / "configs" / "nope.yaml", "0 3 * * 1")
    with pytest.raises(ConfigError, match="shots must be positive"):
        deployment(REPO / "configs" / "quick.yaml", "0 3 * * 1", overrides=["fewshot.shots=[0]"])


def test_prefect_yaml_deploys_real_configs_on_valid_schedules():
    from prefect.client.schemas.schedules import CronSchedule

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    assert spec["deployments"]
    for dep in spec["deployments"]:
        path, _, name = dep["entrypoint"].partition(":")
        assert (REPO / path).is_file() and f"def {name}(" in (REPO / path).read_text()
        load_config(REPO / dep["parameters"]["config_path"])
        for s in dep["schedules"]:
            CronSchedule(cron=s["cron"])


def test_mera_schedule_without_a_server_says_how_to_start_one(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "schedule",
                           "--config", str(REPO / "configs" / "smoke.yaml"),
                           "--cron", "0 3 * * 1"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**env, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2 and "prefect server start" in proc.stderr and "Traceback" not in proc.stderr
