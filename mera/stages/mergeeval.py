"""mergeeval: merge N adapters of one kind and evaluate the merged model, without
fine-tuning, on every task of the pool (mera.multitask)."""

from __future__ import annotations

import json
from pathlib import Path

from mera.artifacts import ADAPTER_SUBDIR
from mera.config import SweepConfig
from mera.plan import Node
from mera.stages.common import runtime
from mera.unit import Unit, lineage, run_unit

VERSION = 1  # bump when what a merge-eval measures changes: it enters its key


def unit(cfg: SweepConfig, node: Node, ups: list[dict]) -> Unit:
    from mera.merge import get_method

    a = node.args
    method = a["method"]
    return Unit(node.stage, node.name, {
        "kind": a["kind"], "model": cfg.kind_config(a["kind"]).model.identity(), "method": method,
        "method_version": get_method(method).version, "merge_params": cfg.merge.params.get(method, {}),
        "n": a["n"], "draw": a["draw"], "members": sorted(a["members"]), "pool": lineage(ups),
        "heldout": cfg.multitask.model_dump(include={"heldout_shots", "heldout_seeds", "head_steps", "head_lr",
                                                     "head_batch_size"}),
        "max_eval": cfg.data.max_eval, "version": VERSION})


def run(cfg: SweepConfig, node: Node, ups: list[dict], parent_id: str | None = None) -> dict:
    from mera import multitask as mtl
    from mera.stages.merge import merge_members

    kind, method, n, draw, members = (node.args[k] for k in ("kind", "method", "n", "draw", "members"))
    params = dict(cfg.merge.params.get(method, {}))
    kcfg = cfg.kind_config(kind)
    by_task = {r["task"]: r for r in ups}

    def work(tmp: Path):
        group = [by_task[t] for t in sorted(members)]
        # ot-acts calibrates on the group's own inputs (there is no target; `calib: target` = its first task)
        meta, merged, diag, _ = merge_members(kcfg, group[0]["task"], method, params, group)
        keep = kind not in mtl.DELTA_KINDS  # the merged adapter is small and loadable; a delta is rebuilt
        model, tok = mtl.merged_model(kcfg.model, meta, merged, tmp / ADAPTER_SUBDIR)
        del merged
        rt = runtime(cfg)
        rows = mtl.evaluate_pool(cfg, kind, model, tok, members, ups, rt)
        (tmp / "diagnostics.json").write_text(json.dumps(diag, indent=1, default=str))
        summary = mtl.summarise(rows)
        manifest = {"kind": kind, "method": method, "n": n, "draw": draw, "members": sorted(members), "rows": rows,
                    "summary": summary, "weights_kept": "adapter" if keep else "none (a delta: re-merge to rebuild)",
                    "runtime": rt.describe()}
        return manifest, summary

    tags = {"kind": kind, "method": method, "n": n, "draw": draw}
    return run_unit(cfg, unit(cfg, node, ups), parent_id, tags, work)
