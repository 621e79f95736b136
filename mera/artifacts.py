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
import tempfile
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Iterator

MANIFEST = "manifest.json"

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


def read_manifest(path: Path) -> dict | None:
    """The manifest of a finished unit, or None when the unit is not done."""
    f = Path(path) / MANIFEST
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError:
        return None


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temp dir; on success it becomes `final`, on error it is removed."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        yield tmp
        if final.exists():  # an earlier attempt without a manifest: not done, replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_manifest(directory: Path, manifest: dict) -> None:
    (Path(directory) / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
