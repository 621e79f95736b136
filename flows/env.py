"""Process environment for a run, set before prefect/mlflow/HF are imported.

Everything a run writes goes under the project (configurable in the config's `paths`);
a user's own PREFECT_HOME / PREFECT_API_URL / MLflow server settings are respected.
"""

from __future__ import annotations

import os

from mera.config import BUNDLED_MODEL, ConfigError, SweepConfig


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


class WarmUp:
    """Start what the flow will need, Prefect's ephemeral API server (~7 s here, ~15 s on a
    new Prefect home) and the MLflow store (~2 s when new), in background threads while the
    flow's libraries (torch, transformers, ...) are imported. A failure here is ignored: the
    flow then starts them itself and reports what goes wrong."""

    def __init__(self, cfg: SweepConfig):
        import threading

        self.cfg = cfg
        self.threads = [threading.Thread(target=self._quietly, args=(fn,), name=f"mera-warm-up-{i}", daemon=True)
                        for i, fn in enumerate((self._prefect, self._mlflow))]
        for t in self.threads:
            t.start()

    @staticmethod
    def _quietly(fn) -> None:
        try:
            fn()
        except Exception:  # noqa: BLE001 - see the class docstring
            pass

    @staticmethod
    def _prefect() -> None:
        from prefect.settings import PREFECT_API_URL

        if not PREFECT_API_URL.value():  # no server of the user's (env or profile): the ephemeral one
            from prefect.server.api.server import SubprocessASGIServer

            SubprocessASGIServer().start()

    def _mlflow(self) -> None:
        from mera.units import tracker

        tracker(self.cfg).experiment_id()

    def wait(self) -> None:
        for t in self.threads:
            t.join()
