"""Checks a sweep passes before any unit runs: every mistake in the config, the data, the
paths or the stores is found here, named, and reported as one line; nothing is written
but the imported data and the empty output folders.
"""

from __future__ import annotations

import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from mera import data
from mera.config import BUNDLED_MODEL, ConfigError, ModelError, SweepConfig
from mera.tasks import TaskError, read_task

OUTPUTS = ("artifacts", "prefect_home", "reports", "results")


def user_errors() -> tuple[type[Exception], ...]:
    """The error types of a user's mistake: printed as one line by the CLI, never retried."""
    from mera.artifacts import SweepBusy
    from mera.merge import MergeError

    return (ConfigError, TaskError, ModelError, MergeError, SweepBusy)


def writable(path: Path, key: str) -> None:
    """Create `path` and prove a file can be written in it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-"):
            pass
    except OSError as exc:
        raise ConfigError(f"paths.{key} {str(path)!r} is not writable ({exc.strerror}); "
                          f"set paths.root or paths.{key} to a directory you can write") from None


def check_paths(cfg: SweepConfig) -> None:
    for key in OUTPUTS:
        writable(cfg.paths.resolve(key), key)
    uri = cfg.paths.mlflow
    if "://" not in uri:
        writable(cfg.paths.resolve("mlflow"), "mlflow")
    elif uri.startswith(("http://", "https://")):
        reachable(uri)


def reachable(uri: str, timeout: float = 5.0) -> None:
    """An MLflow tracking server answers within `timeout` s (MLflow's own client retries for minutes)."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
            return
    except urllib.error.HTTPError:
        return  # it answered: an old server without /health, or an auth wall: MLflow will say more
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConfigError(f"paths.mlflow {uri!r} is unreachable ({reason}); start the server "
                          "(`mlflow server`), fix the URI, or use a local store (paths.mlflow: mlruns)") from None


def check_model(cfg: SweepConfig) -> None:
    name = cfg.model.name
    if name == BUNDLED_MODEL:
        return
    looks_local = name.startswith(("/", ".", "~")) or os.sep in name and Path(name).expanduser().exists()
    if looks_local and not (Path(name).expanduser() / "config.json").is_file():
        raise ModelError(f"model.name {name!r} is not a model directory (no config.json there); "
                         f"accepted: {BUNDLED_MODEL!r} (bundled), a local model directory, or an HF hub id")


def check_data(cfg: SweepConfig) -> dict[str, str]:
    """Every task readable and valid, every K-shot draw possible, every merge group non-empty.
    Returns task -> track."""
    names = sorted(set(cfg.pretrain.tasks) | set(cfg.fewshot.targets))
    specs = {n: read_task(cfg.data_dir(), n) for n in names}
    for n, spec in specs.items():
        for split in data.SPLITS:
            df = data.load_split(cfg.data_dir(), spec, split)
            if n in cfg.fewshot.targets and split == "train":
                check_shots(cfg, spec, df)
            if cfg.multitask is not None and split == "train":
                check_heldout_shots(cfg, spec, df)
    tracks = {n: s.track for n, s in specs.items()}
    check_groups(cfg, tracks)
    return tracks


def check_shots(cfg: SweepConfig, spec, train) -> None:
    shots, dev_k = max(cfg.fewshot.shots), cfg.fewshot.dev_k
    with_dev = any("dev_k" in i.spec.settings for i in cfg.inits())  # its dev sample is drawn beside the K shots
    need = shots + ((dev_k or shots) if with_dev else 0)
    counts = train["label"].value_counts()
    smallest_class = min(range(spec.num_labels), key=lambda c: int(counts.get(c, 0)))
    smallest = int(counts.get(smallest_class, 0))
    if smallest >= need:
        return
    largest_ok = (smallest - dev_k if dev_k else smallest // 2) if with_dev else smallest
    raise TaskError(f"fewshot.shots {shots} is too large for target {spec.name!r}: its smallest class "
                    f"({spec.label_names[smallest_class]!r}) has {smallest} training examples, {need} are needed per "
                    f"class{' (shots + the best-source dev sample)' if with_dev else ''}; accepted: shots up to "
                    f"{max(largest_ok, 0)}")


def check_heldout_shots(cfg: SweepConfig, spec, train) -> None:
    """A held-out head of the multitask study draws multitask.heldout_shots per class."""
    need = cfg.multitask.heldout_shots
    counts = train["label"].value_counts()
    smallest = min(int(counts.get(c, 0)) for c in range(spec.num_labels))
    if smallest < need:
        raise TaskError(f"multitask.heldout_shots {need} is too large for task {spec.name!r}: its smallest class has "
                        f"{smallest} training examples; accepted: heldout_shots up to {smallest}")


def check_groups(cfg: SweepConfig, tracks: dict[str, str]) -> None:
    from mera.plan import empty_groups

    if empty := empty_groups(cfg, tracks):
        target, group = empty[0]
        raise ConfigError(
            f"merge.groups: group {group!r} is empty for target {target!r} once the target itself is "
            f"removed (sources in track {tracks[target]!r}: "
            f"{', '.join(s for s in cfg.pretrain.tasks if tracks[s] == tracks[target]) or 'none'}); "
            "add a source to pretrain.tasks or drop the group")


def check_runtime(cfg: SweepConfig) -> None:
    """run.device / run.precision resolve on this machine (cuda only where torch sees a GPU)."""
    from mera.train import Runtime

    Runtime.of(cfg.run.device, cfg.run.precision, cfg.run.eval_batch_size)


def check_config(cfg: SweepConfig) -> None:
    """What the config alone decides (run before data is imported or anything is written)."""
    check_runtime(cfg)


def preflight(cfg: SweepConfig) -> dict[str, str]:
    check_config(cfg)
    check_paths(cfg)
    check_model(cfg)
    return check_data(cfg)
