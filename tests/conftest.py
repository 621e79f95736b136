"""Shared fixtures. Real components only: the bundled model, real data from ../shared/data
(or $MERA_DATA_SOURCE), Prefect's real engine, a temporary MLflow SQLite store."""

from __future__ import annotations

import os
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_SCRATCH = Path(tempfile.mkdtemp(prefix="mera-tests-"))
# before anything imports prefect or HF: nothing in the tests may reach the network
for key, value in {
    "PREFECT_HOME": str(_SCRATCH / "prefect"),
    "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(_SCRATCH / "prefect" / "results"),
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "DVC_NO_ANALYTICS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ[key] = value


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = Path(os.environ.get("MERA_DATA_SOURCE", REPO.parent / "shared" / "data")).resolve()
    if not (path / "sst2" / "meta.json").is_file():
        pytest.fail(f"real task data not found at {path}: set MERA_DATA_SOURCE to a directory in the uniform layout")
    return path


@pytest.fixture(scope="session")
def model_cfg():
    from mera.config import ModelConfig

    return ModelConfig(max_length=32)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a server a test starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# the in-process tests' one tiny project: sources imdb, mr (sentiment) and qnli (nli) for
# target sst2, 16 examples each, one K and seed; a test overrides what it is about
TINY = {"data.max_eval": 16, "model.max_length": 32, "pretrain.tasks": ["imdb", "mr", "qnli"],
        "pretrain.max_examples": 16, "merge.params": {}, "fewshot.targets": ["sst2"], "fewshot.shots": [2],
        "fewshot.seeds": [13], "fewshot.epochs": 1, "fewshot.min_steps": 2}


@pytest.fixture(scope="session")
def tiny(shared_data, tmp_path_factory):
    """Configs of the shared tiny project: `tiny(overrides)`. Units are keyed by what they
    compute, so the tests that share the folder share the units they have in common (the
    imported data, the prepared tasks, the adapters of equal settings)."""
    from mera.configfile import load_config

    root = tmp_path_factory.mktemp("tiny")

    def config(overrides: dict | None = None):
        return load_config(REPO / "configs" / "smoke.yaml",
                           {"paths.root": str(root), "data.source": str(shared_data), **TINY, **(overrides or {})})

    return config


def wait_healthy(url: str, proc, log: Path, timeout: float) -> None:
    """Until `url` answers; fails with the end of the server's log if it exits or times out."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)


@contextmanager
def mera_ui(root: Path, config: Path = REPO / "configs" / "smoke.yaml"):
    """`mera ui` on the project at root, as a person starts it; yields its URL once it answers
    and ends it (SIGTERM) afterwards."""
    import signal
    import subprocess
    import sys

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(root / "ui.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "ui", "--config", str(config), "--set",
                                 f"paths.root={root}", "--port", str(port)], cwd=root, stdout=log,
                                stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)},
                                start_new_session=True)
    try:
        wait_healthy(f"{url}/health", proc, root / "ui.log", 120)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
