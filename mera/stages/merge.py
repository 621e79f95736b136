"""merge: fuse a group's source adapters into one with a registered method (adapters format)."""

from __future__ import annotations

import json
from pathlib import Path

from mera.artifacts import ADAPTER_SUBDIR
from mera.config import SweepConfig
from mera.plan import Node
from mera.unit import Unit, lineage, run_unit


def unit(cfg: SweepConfig, node: Node, ups: list[dict]) -> Unit:
    from mera.merge import get_method

    a = node.args
    method = a["method"]
    return Unit(node.stage, node.name, {
        "target": a["target"], "group": a["group"], "method": method, "method_version": get_method(method).version,
        "merge_params": cfg.merge.params.get(method, {}), "members": lineage(ups)})


def calibration(cfg: SweepConfig, target: str, sources: list[str], anchor_dir: Path, params: dict):
    """The activations callable for ot-acts merges: training inputs from each source task of
    the group (default), or from the target's training split (`calib: target`; inputs only,
    drawn with a fixed seed, so the merge stays keyed by target x group x method)."""
    from mera.calibrate import from_tasks

    tasks = sources if params.get("calib", "sources") == "sources" else [target]
    return from_tasks(cfg.model, anchor_dir, cfg.data_dir(), tasks, params)


def merge_members(cfg: SweepConfig, target: str, method: str, params: dict, members: list[dict]):
    """Read the members' adapters (results of pretrain, in order) and merge them with
    `method`, calibrating ot-acts methods on the sources' (or target's) inputs. Returns
    (the first adapter's config, merged tensors, diagnostics, the resolved anchor)."""
    from mera.merge import get_method
    from mera.merge.core import merge as merge_states
    from mera.merge.core import resolve_anchor
    from mera.models import read_adapter

    names = [r["task"] for r in members]
    sizes = [r["n_train_available"] for r in members]
    dirs = [Path(r["path"]) / ADAPTER_SUBDIR for r in members]
    read = [read_adapter(d) for d in dirs]
    anchor = resolve_anchor(params.get("anchor", "largest"), len(members), names, sizes)
    acts = None
    if get_method(method).align == "ot-acts" and len(members) > 1:
        acts = calibration(cfg, target, names, dirs[anchor if isinstance(anchor, int) else 0], params)
    merged, diag = merge_states(method, [st for _, st in read], activations=acts, names=names, sizes=sizes, **params)
    return read[0][0], merged, diag, anchor


def run(cfg: SweepConfig, node: Node, ups: list[dict], parent_id: str | None = None) -> dict:
    from mera.merge.core import mean_costs

    target, group, method = node.args["target"], node.args["group"], node.args["method"]
    params = dict(cfg.merge.params.get(method, {}))
    members = sorted(ups, key=lambda r: r["task"])
    names = [r["task"] for r in members]

    def work(tmp: Path):
        from mera.models import write_adapter

        meta, merged, diag, anchor = merge_members(cfg, target, method, params, members)
        write_adapter(tmp / ADAPTER_SUBDIR, meta, merged)
        (tmp / "diagnostics.json").write_text(json.dumps(diag, indent=1))
        metrics = {"n_sources": len(members), **mean_costs(diag)}
        align = diag.get("alignment")
        chosen = align["anchor_name"] if align else (names[anchor] if isinstance(anchor, int) else None)
        manifest = {"target": target, "group": group, "method": method, "sources": names, "anchor": chosen,
                    "single_source": len(members) == 1, "metrics": metrics}
        return manifest, metrics

    tags = {"target": target, "group": group, "method": method, "members": ",".join(names)}
    return run_unit(cfg, unit(cfg, node, members), parent_id, tags, work)
