"""Merging adapters: pure functions on state dicts, one registry keyed by method name.

A method is an alignment (none, ot-wts, ot-acts) followed by a reduction (sum, avg, ta,
ties, dare-linear, dare-ties). MerA's four are mera-sum (none, sum), mera-avg (none, avg),
mera-wts (ot-wts, avg) and mera-acts (ot-acts, avg); the rest are named after their
reduction, prefixed `ot-` (weights) or `ot-acts-` when aligned: ties, ot-ties, ot-acts-ties.

`merge(name, states, **params)` returns the merged state and diagnostics. Activations are
not computed here (no model, no I/O): `ot-acts` methods take an `activations` callable
from the caller (mera.calibrate builds one).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch

from mera.merge import lora
from mera.merge.ot import Acts, align_to_anchor, total_cost
from mera.merge.reduce import REDUCERS
from mera.merge.symmetry import kind_of
from mera.tasks import did_you_mean

State = dict[str, torch.Tensor]
ALIGNS = ("none", "ot-wts", "ot-acts")
ANCHORS = ("largest", "medoid", "first")
# OT knobs read by merge(); calibration knobs read by whoever computes the activations
OT_PARAMS = ("anchor", "features", "metric", "squared", "solver", "reg", "iterations")
CALIB_PARAMS = ("point", "calib", "calib_examples", "max_tokens")


class MergeError(ValueError):
    """Unknown method, bad parameter or adapters that cannot be merged together."""


ALIGN_TEXT = {"none": "", "ot-wts": "hidden units OT-aligned on weights, then ",
              "ot-acts": "hidden units OT-aligned on activations, then "}
REDUCE_TEXT = {"sum": "summed", "avg": "averaged", "ta": "task arithmetic (lam x summed deltas)",
               "ties": "TIES (trim, elect sign, disjoint mean)", "dare-linear": "DARE drop-and-rescale, summed",
               "dare-ties": "DARE drop-and-rescale, then TIES"}


@dataclass(frozen=True)
class MergeMethod:
    name: str
    align: str  # one of ALIGNS
    reduction: str  # a key of REDUCERS
    version: int = 1  # bump when results change: it enters the cache key

    @property
    def description(self) -> str:
        return ALIGN_TEXT[self.align] + REDUCE_TEXT[self.reduction]

    @property
    def reduce(self) -> Callable[..., State]:
        return REDUCERS[self.reduction]

    @property
    def reduce_params(self) -> tuple[str, ...]:
        return tuple(list(inspect.signature(self.reduce).parameters)[1:])

    @property
    def params(self) -> tuple[str, ...]:
        align = {"none": (), "ot-wts": OT_PARAMS, "ot-acts": OT_PARAMS + CALIB_PARAMS}[self.align]
        return self.reduce_params + align


def _name(align: str, reduction: str) -> str:
    mera = {("none", "sum"): "mera-sum", ("none", "avg"): "mera-avg", ("ot-wts", "avg"): "mera-wts",
            ("ot-acts", "avg"): "mera-acts"}
    prefix = {"none": "", "ot-wts": "ot-", "ot-acts": "ot-acts-"}[align]
    return mera.get((align, reduction), prefix + reduction)


METHODS: dict[str, MergeMethod] = {
    m.name: m for m in (MergeMethod(_name(a, r), a, r) for a in ALIGNS for r in REDUCERS)
}


def get_method(name: str) -> MergeMethod:
    if name not in METHODS:
        raise MergeError(f"unknown merge method {name!r}; {did_you_mean(name, list(METHODS))}")
    return METHODS[name]


def check_params(name: str, params: dict) -> None:
    """Fail on a parameter the method does not take (config load and CLI call this early)."""
    method = get_method(name)
    unknown = sorted(set(params) - set(method.params))
    if unknown:
        raise MergeError(f"{name}: unknown parameter(s) {', '.join(unknown)}; "
                         f"accepted: {', '.join(method.params) or 'none'}")


def _check_states(states: list[State]) -> str:
    if not states:
        raise MergeError("merge needs at least one adapter")
    try:
        kind = kind_of(states[0])
    except ValueError as exc:
        raise MergeError(str(exc)) from None
    for i, s in enumerate(states[1:], 1):
        if set(s) != set(states[0]):
            raise MergeError(f"adapter {i} has other tensors than adapter 0 "
                             "(merge adapters of one kind, on one base model)")
        for k, v in s.items():
            if v.shape != states[0][k].shape:
                raise MergeError(f"adapter {i}: {k} has shape {tuple(v.shape)}, adapter 0 {tuple(states[0][k].shape)} "
                                 "(merge adapters of one reduction factor / rank, on one base model)")
    return kind


def resolve_anchor(anchor, n: int, names: list[str] | None = None, sizes: list[int] | None = None) -> int | str:
    """The anchor's index, or "medoid" (decided by cost). Accepts an index, largest, medoid,
    first or a member's task name."""
    if isinstance(anchor, int) and not isinstance(anchor, bool):
        if not 0 <= anchor < n:
            raise MergeError(f"anchor index {anchor} is out of range for {n} adapters")
        return anchor
    if anchor == "first":
        return 0
    if anchor == "medoid":
        return "medoid"
    if anchor == "largest":
        if sizes is None:
            return 0
        order = sorted(range(n), key=lambda i: (-sizes[i], names[i] if names else i))
        return order[0]
    if names and anchor in names:
        return names.index(anchor)
    raise MergeError(f"anchor {anchor!r} is not one of: {', '.join(ANCHORS)}, an index"
                     + (f", or a member task ({', '.join(names)})" if names else ""))


def merge(
    name: str,
    states: list[State],
    *,
    activations: Callable[[State], Acts] | None = None,
    names: list[str] | None = None,
    sizes: list[int] | None = None,
    **params,
) -> tuple[State, dict]:
    """Merge adapters' state dicts with the named method.

    Args:
        name: a registered method (METHODS).
        states: the adapters' tensors, one dict per adapter, same keys and shapes.
        activations: state -> per-module S x r unit activations on fixed calibration
            tokens; required by ot-acts methods.
        names, sizes: the sources' task names and training-set sizes, for the anchor rules
            "largest" and task names.
        params: the method's parameters (`METHODS[name].params`).
    Returns:
        (merged state, diagnostics). A single adapter is returned unchanged by every method.
    """
    method = get_method(name)
    check_params(name, params)
    kind = _check_states(states)
    diag: dict = {"method": name, "kind": kind, "n": len(states), "version": method.version}
    if len(states) == 1:
        diag["single_source"] = True
        return {k: v.clone() for k, v in states[0].items()}, diag
    reduce_kw = {k: params.pop(k) for k in method.reduce_params if k in params}
    for k in CALIB_PARAMS:
        params.pop(k, None)
    if kind == "delta":
        if method.align != "none":
            raise MergeError(f"{name} aligns units, which sparse/full deltas do not have; for deltas use "
                             + ", ".join(n for n, m in METHODS.items() if m.align == "none"))
        if method.reduction == "avg":
            reduce_kw.setdefault("over", "touching")  # sparse: average where the masks overlap
        diag["reduce"] = reduce_kw
    try:
        if method.align == "none":
            if kind == "lora":  # factors carry a GL(r) gauge: reduce the products ΔW = B A instead
                merged, diag["lora"] = lora.reduce_in_delta_space(states, lambda ds: method.reduce(ds, **reduce_kw))
                return merged, diag
            return method.reduce(states, **reduce_kw), diag
        if kind == "lora" and method.reduction != "avg":
            raise MergeError(f"{name}: aligned LoRA factors are only averaged (METHOD.md 6); for LoRA use "
                             f"{method.reduction if method.reduction != 'sum' else 'mera-sum'} (reduces ΔW = B A)")
        if method.align == "ot-acts" and activations is None:
            raise MergeError(f"{name} aligns by activations: pass `activations` (see mera.calibrate)")
        merged, diag["alignment"] = _aligned_merge(method, states, kind, activations, names, sizes,
                                                   reduce_kw, **params)
        return merged, diag
    except (ValueError, TypeError) as exc:
        if isinstance(exc, MergeError):
            raise
        raise MergeError(f"{name}: {exc}") from None


def mean_costs(diag: dict) -> dict[str, float]:
    """Mean matched unit cost over all modules and adapters, before and after alignment
    ({} for an unaligned merge)."""
    align = diag.get("alignment")
    if not align:
        return {}
    before = [c for e in align["modules"].values() for c in e["cost_before"]]
    after = [c for e in align["modules"].values() for c in e["cost_after"]]
    return {"cost_before": sum(before) / len(before), "cost_after": sum(after) / len(after)}


def _aligned_merge(method: MergeMethod, states: list[State], kind: str, activations, names, sizes, reduce_kw: dict,
                   anchor="largest", iterations: int = 1, **ot_kw) -> tuple[State, dict]:
    """Align all to an anchor, reduce; then `iterations - 1` times re-align all to the merge and reduce again."""
    if method.align != "ot-acts":
        activations = None  # weights-based: a callable passed along is not used
    acts = [activations(s) for s in states] if activations else None
    idx = resolve_anchor(anchor, len(states), names, sizes)
    if idx == "medoid":
        idx, medoid_costs = _medoid(states, kind, acts, ot_kw)
    iterations = int(iterations)
    if iterations < 1:
        raise MergeError(f"iterations must be at least 1, got {iterations}")
    aligned, diag = align_to_anchor(states, states[idx], kind=kind, skip=idx, acts=acts,
                                    anchor_acts=acts[idx] if acts else None, **ot_kw)
    merged = method.reduce(aligned, **reduce_kw)
    diag.update(anchor=idx, anchor_name=names[idx] if names else None, iterations=iterations)
    if anchor == "medoid":
        diag["medoid_costs"] = medoid_costs
    for it in range(1, iterations):
        # against the merged adapter: every source, the old anchor included, is re-aligned
        aligned, diag[f"iteration_{it + 1}"] = align_to_anchor(
            states, merged, kind=kind, acts=acts, anchor_acts=activations(merged) if activations else None, **ot_kw)
        merged = method.reduce(aligned, **reduce_kw)
    return merged, diag


def _medoid(states: list[State], kind: str, acts, ot_kw: dict) -> tuple[int, list[float]]:
    """The adapter with the least total alignment cost to all others (N² small solves)."""
    totals = []
    for a in range(len(states)):
        _, d = align_to_anchor(states, states[a], kind=kind, skip=a, acts=acts,
                               anchor_acts=acts[a] if acts else None, **ot_kw)
        totals.append(total_cost(d))
    return min(range(len(states)), key=lambda i: (totals[i], i)), totals


CALIB_CHOICES = {"point": ("pre", "post"), "calib": ("sources", "target")}


def validate(name: str, params: dict, names: list[str] | None = None) -> None:
    """Check a method's parameters and their values before any work: runs the method on two
    tiny synthetic adapters, so every value the merge would reject is rejected now."""
    check_params(name, params)
    for key, accepted in CALIB_CHOICES.items():
        if key in params and params[key] not in accepted:
            raise MergeError(f"{name}: {key} {params[key]!r} is not one of: {', '.join(accepted)}")
    for key in ("calib_examples", "max_tokens"):
        if key in params and (not isinstance(params[key], int) or params[key] <= 0):
            raise MergeError(f"{name}: {key} must be a positive integer, got {params[key]!r}")
    g = torch.Generator().manual_seed(0)
    names = list(names or ["a", "b"])
    fake = [{"m.adapter_down.0.weight": torch.randn(4, 6, generator=g),
             "m.adapter_down.0.bias": torch.randn(4, generator=g),
             "m.adapter_up.weight": torch.randn(6, 4, generator=g), "m.adapter_up.bias": torch.randn(6, generator=g)}
            for _ in names]
    acts = lambda state: {"m.": state["m.adapter_down.0.weight"].T.double()}  # noqa: E731 - 6 "tokens" x 4 units
    merge(name, fake, activations=acts, names=names, sizes=list(range(len(names))), **dict(params))


def not_applicable(kind: str, method: str) -> str | None:
    """Why `method` cannot merge adapters of `kind` (None when it can)."""
    from mera.deltas import KINDS as DELTA_KINDS

    m = get_method(method)
    if kind in DELTA_KINDS and m.align != "none":
        return f"{method} aligns adapter units; {kind} deltas have none"
    if kind == "lora" and m.align != "none" and m.reduction != "avg":
        return f"{method}: aligned LoRA factors are only averaged"
    return None
