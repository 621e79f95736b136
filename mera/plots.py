"""Matplotlib for the reports: the file backend, and a figure saved and closed."""

from __future__ import annotations

from pathlib import Path

from mera.artifacts import atomic_write


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path) -> None:
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110))
    pyplot().close(fig)
