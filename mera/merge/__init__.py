"""Merging adapters: pure functions on state dicts, one registry keyed by method name.

A method is an alignment (none, ot-wts, ...) followed by a reduction (sum, avg, ...).
`merge(name, states, **params)` returns the merged state and diagnostics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from mera.merge.average import reduce_avg, reduce_sum
from mera.merge.ot import align_to_anchor
from mera.tasks import did_you_mean

State = dict[str, torch.Tensor]


class MergeError(ValueError):
    """Unknown method, bad parameter or adapters that cannot be merged together."""


@dataclass(frozen=True)
class MergeMethod:
    name: str
    align: str  # "none" | "ot-wts" | "ot-acts"
    reduce: Callable[[list[State]], State]
    version: int = 1  # bump when results change: it enters the cache key
    params: tuple[str, ...] = ()


_OT_PARAMS = ("anchor", "features", "metric", "squared", "solver", "reg")

METHODS: dict[str, MergeMethod] = {
    m.name: m
    for m in (
        MergeMethod("mera-sum", "none", reduce_sum),
        MergeMethod("mera-avg", "none", reduce_avg),
        MergeMethod("mera-wts", "ot-wts", reduce_avg, params=_OT_PARAMS),
    )
}


def get_method(name: str) -> MergeMethod:
    if name not in METHODS:
        raise MergeError(f"unknown merge method {name!r}; {did_you_mean(name, list(METHODS))}")
    return METHODS[name]


def merge(name: str, states: list[State], **params) -> tuple[State, dict]:
    """Merge adapters' state dicts with the named method; returns (state, diagnostics)."""
    method = get_method(name)
    if not states:
        raise MergeError("merge needs at least one adapter")
    unknown = sorted(set(params) - set(method.params))
    if unknown:
        raise MergeError(f"{name}: unknown parameter(s) {unknown}; accepted: {list(method.params) or 'none'}")
    keys = set(states[0])
    for i, s in enumerate(states[1:], 1):
        if set(s) != keys:
            raise MergeError(f"adapter {i} has other tensors than adapter 0: adapters of one kind and base model only")
    diag: dict = {"method": name, "n": len(states)}
    if method.align == "ot-wts" and len(states) > 1:
        anchor = int(params.pop("anchor", 0))
        states, diag["alignment"] = align_to_anchor(states, anchor, **params)
    return method.reduce(states), diag
