"""Data: import into the uniform layout, load splits, hash them, sample K shots per class.

Uniform layout: `<dir>/<task>/{train,validation}.parquet` with columns sentence1 (str),
sentence2 (str or null), label (int), plus `<dir>/<task>/meta.json`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

from mera.artifacts import atomic_dir
from mera.registry import did_you_mean
from mera.tasks import HUB_TASKS, TaskError, TaskSpec, available_tasks, read_task

SPLITS = ("train", "validation")
COLUMNS = ("sentence1", "sentence2", "label")


def load_split(data_dir: Path, task: TaskSpec, split: str) -> pd.DataFrame:
    """One split as a DataFrame with exactly the uniform columns; bad files fail clearly."""
    path = Path(data_dir) / task.name / f"{split}.parquet"
    if not path.is_file():
        raise TaskError(f"task {task.name!r} has no {split} split at {path}")
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise TaskError(f"{path} is not a readable parquet file ({exc})") from None
    missing = [c for c in ("sentence1", "label") if c not in df.columns]
    if missing:
        raise TaskError(f"{path} lacks column(s) {missing}; the uniform schema is {list(COLUMNS)}")
    if "sentence2" not in df.columns:
        df["sentence2"] = None
    df = df[list(COLUMNS)].reset_index(drop=True)
    if df.empty:
        raise TaskError(f"{path} has no rows: an empty {split} split")
    null = df["sentence1"].isna() | (df["sentence1"].astype(str).str.strip() == "")
    if null.any():
        raise TaskError(f"{path}: sentence1 is null or empty in row {int(null.idxmax())} ({int(null.sum())} rows); "
                        "accepted: non-empty text in every row (drop those rows)")
    for column in ("sentence1", "sentence2"):
        _check_type(path, df[column], True, "text (str)")
    _check_type(path, df["label"], False, f"integer class indices 0..{task.num_labels - 1}")
    if not pd.api.types.is_integer_dtype(df["label"]) and not (df["label"] == df["label"].round()).all():
        raise TaskError(f"{path}: label must hold integer class indices, got {df['label'].dtype} "
                        f"(e.g. {df['label'].iloc[0]!r}); accepted: 0..{task.num_labels - 1}")
    bad = ~df["label"].between(0, task.num_labels - 1)
    if bad.any():
        raise TaskError(
            f"{path}: label {df.loc[bad, 'label'].iloc[0]!r} is outside 0..{task.num_labels - 1} "
            f"(label_names {list(task.label_names)})"
        )
    df["label"] = df["label"].astype(int)
    return df


def _check_type(path: Path, values: pd.Series, text: bool, accepted: str) -> None:
    """One line naming the file, the column and the type found, for a column of the wrong type:
    a text column holds str, the label column numbers (not booleans)."""
    present = values.dropna()
    if text:
        fits, ok = pd.api.types.is_string_dtype(present), (lambda v: isinstance(v, str))
    else:
        fits = pd.api.types.is_numeric_dtype(present) and not pd.api.types.is_bool_dtype(present)
        ok = lambda v: isinstance(v, int | float) and not isinstance(v, bool)  # noqa: E731
    if present.empty or fits:
        return
    wrong = present[~present.map(ok)]
    row, value = (wrong.index[0], wrong.iloc[0]) if len(wrong) else (present.index[0], present.iloc[0])
    value = value.item() if hasattr(value, "item") else value  # numpy scalars as the Python value they hold
    raise TaskError(f"{path}: column {values.name} holds {type(value).__name__} values (e.g. {value!r} in "
                    f"row {row}); accepted: {accepted}")


def task_hash(data_dir: Path, name: str) -> str:
    """Content hash of a task's files: enters the cache key of everything that reads it."""
    h = hashlib.sha256()
    task_dir = Path(data_dir) / name
    for f in sorted(p for p in task_dir.iterdir() if p.is_file()):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _k_per_class(df: pd.DataFrame, k: int, seed: int, num_labels: int, what: str) -> pd.DataFrame:
    parts = []
    for label in range(num_labels):
        pool = df[df["label"] == label]
        if len(pool) < k:
            raise TaskError(f"class {label} has {len(pool)} training examples{what}, fewer than shots={k}")
        parts.append(pool.sample(n=k, random_state=seed))
    return pd.concat(parts).sample(frac=1.0, random_state=seed)


def sample_k_shot(df: pd.DataFrame, k: int, seed: int, num_labels: int) -> pd.DataFrame:
    """Exactly `k` examples of every class, drawn with `seed` (same seed -> same sample).

    Draws from the train split only, so it can never overlap the validation split. The
    index keeps each row's position in `df` (a split's cached tokens are subset by it).
    """
    return _k_per_class(df, k, seed, num_labels, "")


def sample_dev(df: pd.DataFrame, k: int, seed: int, num_labels: int, dev_k: int) -> pd.DataFrame:
    """A K-shot dev sample for selection: `dev_k` per class from the train split, disjoint
    from `sample_k_shot(df, k, seed)` (the examples the fine-tune trains on)."""
    taken = _k_per_class(df, k, seed, num_labels, "").index
    return _k_per_class(df.drop(index=taken), dev_k, seed + 1, num_labels, " left for the dev sample") \
        .reset_index(drop=True)


def cap(df: pd.DataFrame, limit: int | None, seed: int = 0) -> pd.DataFrame:
    """A seeded subsample of at most `limit` rows (None = all); the index keeps each row's
    position in `df`."""
    if limit is None or len(df) <= limit:
        return df
    return df.sample(n=limit, random_state=seed)


def _copy_task(src: Path, dst_root: Path, name: str) -> None:
    """Copy one task atomically: a temp dir beside the target, then rename."""
    with atomic_dir(dst_root / name) as tmp:
        for f in src.iterdir():
            if f.is_file():
                shutil.copy2(f, tmp / f.name)


def import_from_dir(source: Path, data_dir: Path, tasks: list[str] | None = None) -> list[str]:
    """Copy tasks (all of `source` by default) that are in the uniform layout into data_dir."""
    source = Path(source).expanduser()
    if not source.is_dir():
        raise TaskError(f"data source {str(source)!r} is not a directory (expected <dir>/<task>/meta.json)")
    known = available_tasks(source)
    names = tasks or known
    for name in names:
        if name not in known:
            raise TaskError(f"task {name!r} is not in {source}; {did_you_mean(name, known)}")
    for name in names:  # validate every task before any lands in data_dir
        spec = read_task(source, name)
        for split in SPLITS:
            load_split(source, spec, split)
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        _copy_task(source / name, data_dir, name)
    return names


def import_from_hub(data_dir: Path, name: str) -> None:
    """Download one task from the Hugging Face hub into the uniform layout (needs a network)."""
    src = HUB_TASKS[name]  # an unknown name: TaskError with did-you-mean
    from datasets import load_dataset  # heavy import, only on this path

    with atomic_dir(Path(data_dir) / name) as tmp:
        for split, hub_split in src.splits:
            ds = load_dataset(src.path, src.config, split=hub_split).to_pandas()
            ds = ds[ds["label"] >= 0]  # hub test splits mark unlabelled rows with -1
            label = ds["label"]
            if src.label_threshold is not None:
                label = (label >= src.label_threshold).astype(int)
            df = pd.DataFrame({
                "sentence1": ds[src.sentence1].astype(str),
                "sentence2": ds[src.sentence2].astype(str) if src.sentence2 else None,
                "label": label.astype("int64"),
            })
            df.to_parquet(tmp / f"{split}.parquet", index=False)
        meta = {"task": name, "track": src.track, "label_names": list(src.label_names),
                "source": {"hub": src.path, "config": src.config}}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))


def ensure_tasks(data_dir: Path, source: str, names: list[str]) -> list[str]:
    """Import the tasks missing from data_dir from `source` ("hub" or a directory).

    From a directory every task there is copied, so the DVC-tracked data/ is the same
    on every machine; from the hub only the missing tasks are downloaded.
    Returns the names imported (empty when nothing was missing).
    """
    missing = [n for n in names if not (Path(data_dir) / n / "meta.json").is_file()]
    if not missing:
        return []
    if source == "hub":
        for name in missing:
            import_from_hub(data_dir, name)
        return missing
    source_dir = Path(source).expanduser()
    if source_dir.is_dir():  # a name the source lacks fails before anything is copied
        known = available_tasks(source_dir)
        for name in missing:
            if name not in known:
                raise TaskError(f"task {name!r} is neither in {data_dir} nor in data.source {str(source_dir)!r} "
                                f"(no {name}/meta.json there); {did_you_mean(name, known)}")
    return import_from_dir(source_dir, data_dir)


def version_with_dvc(data_dir: Path) -> Path | None:
    """`dvc add` the data dir when its parent is a DVC project; returns the .dvc file (or None)."""
    data_dir = Path(data_dir).resolve()
    root = data_dir.parent
    if not (root / ".dvc").is_dir():
        return None
    exe = shutil.which("dvc") or str(Path(sys.executable).with_name("dvc"))
    proc = subprocess.run([exe, "add", data_dir.name], cwd=root, capture_output=True, text=True,
                          env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"dvc add {data_dir.name} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return root / f"{data_dir.name}.dvc"
