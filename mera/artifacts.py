"""Unit artifacts: one key, a directory named by it, and a manifest written last.

`artifacts/<stage>/<readable-id>-<key>/` is filled in a temp directory beside it and
renamed into place with its manifest.json, so a killed run never leaves a directory that
a resume would take as done.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

MANIFEST = "manifest.json"
ADAPTER_SUBDIR = "adapter"  # where a unit keeps its adapter (adapters-library or delta format)

try:
    PACKAGE_VERSION = version("mera-bench")
except PackageNotFoundError:  # running from a source tree without install
    PACKAGE_VERSION = "0+unknown"


def unit_key(stage: str, params: dict) -> str:
    """sha256 of the canonical JSON of the stage, its resolved params and upstream keys."""
    blob = json.dumps({"stage": stage, "params": params, "package": PACKAGE_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def unit_dir(artifacts: Path, stage: str, readable: str, key: str) -> Path:
    return Path(artifacts) / stage / f"{readable}-{key}"


def file_hashes(directory: Path) -> dict[str, str]:
    """sha256 of every file under `directory` but the manifest, by relative path."""
    directory = Path(directory)
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != MANIFEST}


def read_manifest(path: Path) -> dict | None:
    """The manifest of a finished unit, or None when the unit is not done (see `check`)."""
    return check(path)[0]


def check(path: Path) -> tuple[dict | None, str | None]:
    """(the manifest of a finished unit, None), or (None, why it is no longer done) when a
    manifest is there but unreadable or its files no longer match the hashes it recorded,
    or (None, None) when the unit never finished."""
    f = Path(path) / MANIFEST
    if not f.is_file():
        return None, None
    try:
        manifest = json.loads(f.read_text())
    except json.JSONDecodeError:
        return None, "its manifest is unreadable"
    recorded = manifest.get("files")
    if recorded is not None and (found := file_hashes(path)) != recorded:
        changed = sorted(n for n in set(recorded) | set(found) if recorded.get(n) != found.get(n))
        return None, f"{', '.join(changed[:3])}{' ...' if len(changed) > 3 else ''} changed since it finished"
    return manifest, None


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temp dir; on success it becomes `final`, on error it is removed."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".tmp-{final.name}-*"):  # a killed attempt's leftovers (the sweep lock
        shutil.rmtree(stale, ignore_errors=True)  # keeps a concurrent writer of the same unit out)
    # not tempfile.mkdtemp: its 0700 would keep a lab's group out of every unit's folder
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()  # the mode the user's umask gives
    try:
        yield tmp
        if final.exists():  # an earlier attempt without a manifest: not done, replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write(path: Path, write) -> None:
    """`write(tmp)` a file beside `path`, then rename it into place: readers see the old file
    or the whole new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    write(tmp)
    os.replace(tmp, path)


def write_manifest(directory: Path, manifest: dict) -> dict:
    """Written last: records the content hash of every file the unit wrote. Returns it as written."""
    manifest = {**manifest, "files": file_hashes(directory)}
    (Path(directory) / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
    return manifest


class SweepBusy(RuntimeError):
    """Another `mera run` holds the sweep."""


@contextmanager
def sweep_lock(artifacts: Path, name: str) -> Iterator[None]:
    """One `mera run` per sweep at a time: a second one exits at once, naming the first
    (an OS lock: released when its process dies, even by SIGKILL)."""
    import fcntl

    artifacts = Path(artifacts)
    artifacts.mkdir(parents=True, exist_ok=True)
    path = artifacts / f".lock-{name}"
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise SweepBusy(f"sweep {name!r} is already running ({holder}); wait for it to finish or stop it "
                            "(this run changed nothing)") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f, fcntl.LOCK_UN)
