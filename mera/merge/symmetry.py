"""Which axis of which adapter tensor a hidden-unit permutation acts on, declared once.

A bottleneck module computes `W_up relu(W_down x + b_down) + b_up`; permuting its r hidden
units by P gives `(Pᵀ W_down, Pᵀ b_down, W_up P, b_up)`: the same function. Alignment
code reads this table, so a new adapter kind is a new entry, not new code.
"""

from __future__ import annotations

import torch

# kind -> {tensor-name suffix: axis indexed by hidden unit}; tensors not listed are never permuted
SYMMETRIES: dict[str, dict[str, int]] = {
    # Pfeiffer (seq_bn) and Houlsby (double_seq_bn, two modules per layer) share one module shape
    "bottleneck": {"adapter_down.0.weight": 0, "adapter_down.0.bias": 0, "adapter_up.weight": 1},
}
DOWN = "adapter_down.0.weight"


def modules(state: dict[str, torch.Tensor], kind: str = "bottleneck") -> dict[str, dict[str, torch.Tensor]]:
    """Group a state dict into modules: prefix -> {suffix: tensor}, in key order."""
    suffixes = SYMMETRIES[kind]
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        for suffix in (*suffixes, "adapter_up.bias"):
            if key.endswith(suffix):
                out.setdefault(key[: -len(suffix)], {})[suffix] = value
                break
    return out


def hidden_size(module: dict[str, torch.Tensor]) -> int:
    return module[DOWN].shape[0]


def transport(module: dict[str, torch.Tensor], plan: torch.Tensor, kind: str = "bottleneck") -> dict[str, torch.Tensor]:
    """Move a module's hidden units with a (corrected) plan T̃ of shape r_i x r_anchor.

    Unit k of the result is Σ_j T̃[j, k] · unit j of the input (a permutation when T̃ is one).
    """
    out = dict(module)
    for suffix, axis in SYMMETRIES[kind].items():
        t = module[suffix]
        out[suffix] = torch.movedim(torch.tensordot(plan.to(t.dtype), torch.movedim(t, axis, 0), dims=([0], [0])), 0, axis)
    return out


def permute(state: dict[str, torch.Tensor], perms: dict[str, torch.Tensor], kind: str = "bottleneck") -> dict[str, torch.Tensor]:
    """Permute hidden units of every module (prefix -> index tensor); the function is unchanged."""
    out = dict(state)
    for prefix, perm in perms.items():
        for suffix, axis in SYMMETRIES[kind].items():
            key = prefix + suffix
            out[key] = state[key].index_select(axis, perm)
    return out
