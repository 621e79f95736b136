"""Reducers without alignment: elementwise sum and mean (MerA's Sum and Avg)."""

from __future__ import annotations

import torch

State = dict[str, torch.Tensor]


def reduce_sum(states: list[State]) -> State:
    """θ = Σ_i θ_i, tensor by tensor."""
    return {k: torch.stack([s[k] for s in states]).sum(0) for k in states[0]}


def reduce_avg(states: list[State]) -> State:
    """θ = (1/N) Σ_i θ_i, tensor by tensor."""
    return {k: torch.stack([s[k] for s in states]).mean(0) for k in states[0]}
