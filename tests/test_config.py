from __future__ import annotations

import subprocess
import sys

import pytest

from mera.config import ConfigError
from mera.configfile import load_config
from tests.conftest import REPO

SMOKE = REPO / "configs" / "smoke.yaml"


@pytest.mark.parametrize("config", ["smoke", "quick", "default"])
def test_shipped_configs_load(config):
    cfg = load_config(REPO / "configs" / f"{config}.yaml")
    assert cfg.name == config and cfg.fewshot.targets


@pytest.mark.parametrize("override, message", [
    ({"fewshot.inits": ["adapter", "mera-wst"]}, "unknown init 'mera-wst'"),
    ({"merge.groups": ["same-trak"]}, "unknown group 'same-trak'"),
    ({"fewshot.shots": [0]}, "shots must be positive"),
    ({"merge.methods": ["mera-avg", "mera-wst"]}, "unknown merge method 'mera-wst'; did you mean 'mera-wts'"),
    ({"pretrain.epochs": -1}, "pretrain.epochs"),
    ({"model.reduction_factor": "big"}, "model.reduction_factor"),
    ({"fewshot.seed": [1]}, "fewshot.seed: unknown key"),
])
def test_bad_values_name_the_key_and_value(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(SMOKE, override)


def test_env_defaults_expand(monkeypatch):
    monkeypatch.delenv("MERA_DATA_SOURCE", raising=False)
    assert load_config(SMOKE).data.source == "hub"
    monkeypatch.setenv("MERA_DATA_SOURCE", "/somewhere")
    assert load_config(SMOKE).data.source == "/somewhere"


def test_cli_reports_a_user_mistake_in_one_line_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    text = SMOKE.read_text()
    bad.write_text(text.replace("methods: [mera-avg, mera-wts,", "methods: [mera-avg, mera-wtz,"))
    assert bad.read_text() != text
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "run", "--config", str(bad)],
                          capture_output=True, text=True, cwd=tmp_path, env={"PATH": "", "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "merge.methods: unknown merge method 'mera-wtz'; did you mean 'mera-wts'" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]  # nothing half-written


@pytest.mark.parametrize("run, runner", [
    ({"workers": 2}, "process"),  # several workers: one process each, reproducible by default
    ({"workers": 2, "runner": None}, "process"),
    ({"workers": 1}, "thread"),
    ({}, "thread"),
    ({"workers": 2, "runner": "thread"}, "thread"),  # asked for: kept
])
def test_several_workers_run_in_processes_unless_a_runner_is_named(run, runner):
    assert load_config(SMOKE, {"run": run}).run.runner == runner


@pytest.mark.parametrize("config", ["smoke", "quick", "default", "multitask", "paper"])
def test_every_shipped_config_with_several_workers_is_reproducible(config):
    run = load_config(REPO / "configs" / f"{config}.yaml").run
    assert run.workers == 1 or run.runner in ("process", "dask")


def test_loading_a_config_imports_no_torch():
    """The registries list and check names from declarations; the implementations (torch,
    POT, transformers) are imported when a merge or fine-tune runs."""
    code = ("import sys; from mera.configfile import load_config; "
            "load_config('configs/smoke.yaml', {'merge.params': {'ties': {'density': 0.5}, 'mera-wts': {'solver': "
            "'sinkhorn'}}}); from flows.cli import method_list; method_list(); "
            "heavy = [m for m in ('torch', 'ot', 'transformers', 'pandas') if m in sys.modules]; "
            "print(heavy); from mera.merge import METHODS; METHODS['ties'].reduce; print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["[]", "True"]
