"""Running a merge: align (optionally) and reduce adapters' state dicts with a registered
method (mera.merge.methods). Activations are not computed here (no model, no I/O):
`ot-acts` methods take an `activations` callable from the caller (mera.calibrate builds one)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from mera.merge import lora
from mera.merge.methods import ANCHORS, CALIB_PARAMS, METHODS, MergeError, MergeMethod, check_params, get_method
from mera.merge.ot import Acts, align_to_anchor, total_cost
from mera.merge.symmetry import kind_of

State = dict[str, torch.Tensor]


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
