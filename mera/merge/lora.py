"""LoRA merges in ΔW space (METHOD.md 6).

A LoRA module's factors (A, B) are defined only up to an invertible r x r change of basis,
so averaging A's and B's separately is not averaging the updates. Unaligned reducers act
on ΔW = B A (the common α/r scale cancels) and the result is factored back to the input
rank by SVD; the relative truncation error per module goes into the diagnostics.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mera.merge.symmetry import flatten, modules

State = dict[str, torch.Tensor]


def deltas(state: State) -> State:
    """Module prefix -> ΔW / scale = B A (out x in)."""
    return {prefix: m["lora_B"].double() @ m["lora_A"].double() for prefix, m in modules(state, "lora").items()}


def factorise(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(A, B, relative error) with B A the best rank-`rank` approximation of `delta`."""
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    root = s[:rank].sqrt()
    b = u[:, :rank] * root
    a = root[:, None] * vh[:rank]
    err = float(s[rank:].norm() / s.norm().clamp(min=1e-30))
    return a, b, err


def reduce_in_delta_space(states: list[State], reduce: Callable[[list[State]], State]) -> tuple[State, dict]:
    merged_deltas = reduce([deltas(s) for s in states])
    like = modules(states[0], "lora")
    out, errors = {}, {}
    for prefix, m in like.items():
        a, b, errors[prefix] = factorise(merged_deltas[prefix], m["lora_A"].shape[0])
        out[prefix] = {"lora_A": a.to(m["lora_A"].dtype), "lora_B": b.to(m["lora_B"].dtype)}
    merged = flatten(out)
    return {k: merged[k] for k in states[0]}, {"space": "delta", "truncation_error": errors}
