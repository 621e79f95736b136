"""Unit folders: written whole or not at all, readable as the user's umask says."""

from __future__ import annotations

import os
import stat

import pytest

from mera.artifacts import atomic_dir


@pytest.mark.parametrize("umask, mode", [(0o022, 0o755), (0o002, 0o775)])
def test_a_unit_folder_gets_the_mode_the_umask_gives(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        with atomic_dir(tmp_path / "merged" / "unit") as tmp:
            (tmp / "adapter.bin").write_bytes(b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "merged" / "unit").stat().st_mode) == mode  # a lab's group can read it
    assert stat.S_IMODE((tmp_path / "merged" / "unit" / "adapter.bin").stat().st_mode) == mode & 0o666


def test_a_failed_unit_leaves_no_folder(tmp_path):
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "unit") as tmp:
        (tmp / "half").write_text("x")
        raise RuntimeError("cut short")
    assert list(tmp_path.iterdir()) == []
