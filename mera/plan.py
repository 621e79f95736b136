"""The plan: a config turned into the sweep's DAG, every unit with its stage, readable name,
arguments and upstream units. The only place that enumerates units: the flow, `mera status`,
`mera report`, the benches and the tests read it. Pure: nothing runs, nothing is written.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from mera.config import SweepConfig
from mera.inits import Init

STAGES = ("prepare", "pretrain", "merge", "fewshot", "mergeeval", "report")


@dataclass(frozen=True)
class Node:
    """One unit of the plan. `name` is unique within its stage: the artifact folder's prefix,
    the Prefect task run's and MLflow run's name, the line `mera status -v` prints."""

    stage: str
    name: str
    args: dict = field(hash=False)  # what the stage's recipe reads besides its upstream results
    upstream: tuple[str, ...] = ()  # ids of the units whose results it starts from, in order

    @property
    def id(self) -> str:
        return f"{self.stage}/{self.name}"


def adapter_name(task: str, kind: str) -> str:
    """A pretrained adapter's name: the task, plus the kind when not a bottleneck."""
    return task if kind == "bottleneck" else f"{task}.{kind}"


def prepare_node(task: str) -> Node:
    return Node("prepare", task, {"task": task})


def pretrain_node(task: str, kind: str) -> Node:
    return Node("pretrain", adapter_name(task, kind), {"task": task, "kind": kind}, (f"prepare/{task}",))


def merge_node(target: str, group: str, method: str, members: list[str], kind: str) -> Node:
    return Node("merge", f"{target}.{group}.{method}", {"target": target, "group": group, "method": method},
                tuple(f"pretrain/{adapter_name(m, kind)}" for m in members))


def fewshot_node(target: str, init: Init, group: str | None, shots: int, seed: int, upstream: list[str]) -> Node:
    name = f"{target}.{init.name.replace(':', '-')}" + (f".{group}" if group else "") + f".k{shots}.s{seed}"
    return Node("fewshot", name, {"target": target, "init": init.name, "group": group, "shots": shots, "seed": seed},
                (f"prepare/{target}", *upstream))


def mergeeval_node(kind: str, method: str, n: int, draw: int, members: list[str], pool: list[str]) -> Node:
    return Node("mergeeval", f"{kind}.{method}.n{n}.d{draw}",
                {"kind": kind, "method": method, "n": n, "draw": draw, "members": sorted(members)},
                tuple(f"pretrain/{adapter_name(t, kind)}" for t in pool))


def group_members(target: str, group: str, tracks: dict[str, str], sources: list[str]) -> list[str]:
    """Source tasks merged for a target; the target's own adapter is never among them."""
    others = [s for s in sources if s != target]
    if group == "same-track":
        return [s for s in others if tracks[s] == tracks[target]]
    if group == "cross-track":
        return [s for s in others if tracks[s] != tracks[target]]
    return others


def multitask_groups(tasks: list[str], sizes: list[int], draws: int, seed: int) -> list[tuple[int, int, list[str]]]:
    """(N, draw, members) for every size and draw: draw d is one seeded order of the tasks and
    its group of N is the first N of that order, so a draw's groups are nested (the curve over
    N adds tasks, it does not swap them). A size that holds the whole pool is drawn once."""
    out = []
    for d in range(draws):
        order = sorted(tasks)
        random.Random(f"{seed}-{d}").shuffle(order)
        out += [(n, d, sorted(order[:n])) for n in sizes if not (n == len(tasks) and d > 0)]
    return out


def pretrain_kinds(cfg: SweepConfig) -> list[str]:
    """The adapter kinds the sweep pretrains: model.adapter for the fine-tunes, plus the
    multitask study's kinds."""
    kinds = [cfg.model.adapter] if cfg.fewshot.targets else []
    return kinds + [k for k in (cfg.multitask.kinds if cfg.multitask else []) if k not in kinds]


def pretrain_config(cfg: SweepConfig, kind: str) -> SweepConfig:
    """The config a kind's adapters are pretrained under (the sweep's own for model.adapter)."""
    return cfg if kind == cfg.model.adapter and cfg.fewshot.targets else cfg.kind_config(kind)


def task_names(cfg: SweepConfig) -> list[str]:
    return sorted(set(cfg.pretrain.tasks) | set(cfg.fewshot.targets))


def known_track(cfg: SweepConfig, name: str) -> str | None:
    """A task's track from its meta.json (the data dir, else the data source) or the hub
    registry, so a fresh project's plan lists its merges and fine-tunes; None if unknown."""
    from mera.tasks import HUB_TASKS, TaskError, read_task

    dirs = [cfg.data_dir()] + ([] if cfg.data.source == "hub" else [Path(cfg.data.source).expanduser()])
    for d in dirs:
        if (d / name / "meta.json").is_file():
            try:
                return read_task(d, name).track
            except TaskError:
                return None
    return HUB_TASKS[name].track if name in HUB_TASKS else None


def inits_upstream(cfg: SweepConfig, init: Init, target: str, group: str | None,
                   tracks: dict[str, str]) -> list[str] | None:
    """The units an init starts from; None when the cell does not exist (an empty group, or
    the target's own adapter, which would leak)."""
    kind = cfg.model.adapter
    upstream = init.spec.upstream
    if upstream == "source":
        return None if init.arg == target else [f"pretrain/{adapter_name(init.arg, kind)}"]
    if upstream == "none":
        return []
    members = group_members(target, group, tracks, cfg.pretrain.tasks)
    if upstream == "merge":
        return [merge_node(target, group, init.method, members, kind).id] if members else None
    return [f"pretrain/{adapter_name(m, kind)}" for m in members] or None


def empty_groups(cfg: SweepConfig, tracks: dict[str, str]) -> list[tuple[str, str]]:
    """(target, group) for each group a grouped init uses that holds no source once the
    target is left out: its cells cannot exist (the preflight rejects the config)."""
    used = {g for i in cfg.inits() if i.grouped for g in cfg.groups_of(i)}
    return [(t, g) for t in cfg.fewshot.targets for g in cfg.merge.groups
            if g in used and not group_members(t, g, tracks, cfg.pretrain.tasks)]


def not_applicable_pairs(cfg: SweepConfig) -> dict[tuple[str, str], str]:
    """(kind, method) -> why the method cannot merge that kind, for the multitask study."""
    from mera.merge import not_applicable

    mt = cfg.multitask
    return {(k, m): why for k in mt.kinds for m in mt.methods if (why := not_applicable(k, m))}


def build(cfg: SweepConfig, tracks: dict[str, str | None] | None = None) -> list[Node]:
    """Every unit of the sweep in an order that runs upstream units first. Merges and
    fine-tunes need each task's track (default: `known_track`); while one is unknown they are
    left out (`complete(cfg, tracks)` says so)."""
    tracks = tracks if tracks is not None else {n: known_track(cfg, n) for n in task_names(cfg)}
    nodes = [prepare_node(t) for t in task_names(cfg)]
    nodes += [pretrain_node(t, kind) for kind in pretrain_kinds(cfg) for t in cfg.pretrain.tasks]
    if complete(cfg, tracks):
        for target in cfg.fewshot.targets:
            for group in cfg.merge.groups:
                members = group_members(target, group, tracks, cfg.pretrain.tasks)
                nodes += [merge_node(target, group, m, members, cfg.model.adapter)
                          for m in (cfg.merge.methods if members else [])]
        for target in cfg.fewshot.targets:
            for init in cfg.inits():
                for group in cfg.groups_of(init):
                    ups = inits_upstream(cfg, init, target, group, tracks)
                    if ups is not None:
                        nodes += [fewshot_node(target, init, group, k, s, ups)
                                  for k in cfg.fewshot.shots for s in cfg.fewshot.seeds]
    mt = cfg.multitask
    if mt is not None:  # a method that cannot merge a kind is never run (the report lists it as n/a)
        skipped = not_applicable_pairs(cfg)
        nodes += [mergeeval_node(kind, method, n, d, members, cfg.pretrain.tasks)
                  for kind in mt.kinds for method in mt.methods if (kind, method) not in skipped
                  for n, d, members in multitask_groups(cfg.pretrain.tasks, mt.sizes, mt.draws, mt.seed)]
    return nodes


def complete(cfg: SweepConfig, tracks: dict[str, str | None]) -> bool:
    """Whether every task's track is known, so the plan holds every merge and fine-tune."""
    return all(tracks.get(n) is not None for n in task_names(cfg))


def stages_until(until: str) -> tuple[str, ...]:
    return STAGES[: STAGES.index(until) + 1]
