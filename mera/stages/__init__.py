"""One recipe per stage of the plan (mera.plan.STAGES but the report), each a module with

    unit(cfg, node, ups) -> Unit    where the unit's result lives and its key
    run(cfg, node, ups, parent_id)  the result, from its manifest or by running the unit

`ups` are the results of `node.upstream`, in that order. Imported when first used.
"""

from __future__ import annotations

from importlib import import_module

from mera.config import SweepConfig
from mera.plan import STAGES, Node
from mera.unit import Unit

RECIPES = STAGES[:-1]


def recipe(stage: str):
    if stage not in RECIPES:
        raise ValueError(f"unknown stage {stage!r}; accepted: {', '.join(RECIPES)}")
    return import_module(f"mera.stages.{stage}")


def unit(cfg: SweepConfig, node: Node, ups: list[dict]) -> Unit:
    return recipe(node.stage).unit(cfg, node, ups)


def run(cfg: SweepConfig, node: Node, ups: list[dict], parent_id: str | None = None) -> dict:
    return recipe(node.stage).run(cfg, node, ups, parent_id)


def run_all(cfg: SweepConfig, nodes: list[Node], done: dict[str, dict] | None = None) -> dict[str, dict]:
    """Run the nodes in order in this process, no orchestrator and no parent run (the plain
    loop of bench/overhead.py, the tests). A node's upstream comes before it or is in `done`
    (earlier results by id). Returns the nodes' results by id."""
    results = dict(done or {})
    for node in nodes:
        results[node.id] = run(cfg, node, [results[u] for u in node.upstream])
    return {n.id: results[n.id] for n in nodes}
