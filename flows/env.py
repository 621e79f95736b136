"""Process environment for a run, set before prefect/mlflow/HF are imported.

Everything a run writes goes under the project (configurable in the config's `paths`);
a user's own PREFECT_HOME / PREFECT_API_URL / MLflow server settings are respected.
"""

from __future__ import annotations

import os

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
    import mera.merge.core  # noqa: F401
    import mera.models  # noqa: F401


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
