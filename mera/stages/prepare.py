"""prepare: bring a task into the data dir, validate its splits, record its hash and track."""

from __future__ import annotations

from pathlib import Path

from mera import data
from mera.config import SweepConfig
from mera.plan import Node, task_names
from mera.tasks import TASK_VERSION, read_task
from mera.unit import Unit, run_unit


def import_data(cfg: SweepConfig) -> list[str]:
    """Bring every task the sweep reads into the data dir (from a directory or the hub),
    and version what arrived with DVC when the project is a DVC repo."""
    imported = data.ensure_tasks(cfg.data_dir(), cfg.data.source, task_names(cfg))
    if imported:
        data.version_with_dvc(cfg.data_dir())
    return imported


def unit(cfg: SweepConfig, node: Node, ups: list[dict]) -> Unit:
    task = node.args["task"]
    return Unit(node.stage, node.name, {"task": task, "data": data.task_hash(cfg.data_dir(), task),
                                        "task_version": TASK_VERSION})


def run(cfg: SweepConfig, node: Node, ups: list[dict], parent_id: str | None = None) -> dict:
    task = node.args["task"]
    spec = read_task(cfg.data_dir(), task)
    u = unit(cfg, node, ups)
    digest = u.params["data"]

    def work(tmp: Path):
        rows = {s: len(data.load_split(cfg.data_dir(), spec, s)) for s in data.SPLITS}
        manifest = {"task": task, "track": spec.track, "label_names": list(spec.label_names), "hash": digest,
                    "rows": rows}
        return manifest, {f"rows_{s}": n for s, n in rows.items()}

    return run_unit(cfg, u, parent_id, {"task": task, "track": spec.track}, work, logged=False)
