"""Which axis of which adapter tensor a hidden-unit permutation acts on, declared once.

A bottleneck module computes `W_up σ(W_down x + b_down) + b_up` with σ elementwise;
permuting its r hidden units by P gives `(Pᵀ W_down, Pᵀ b_down, W_up P, b_up)`: the same
function. A LoRA module computes `x ↦ scale · B A x`; permuting its r rank components
(rows of A, columns of B) leaves `B A` unchanged, and so does flipping the sign of row k of
A together with column k of B (METHOD.md section 6). Alignment code reads this table, so
a new adapter kind is a new entry, not new code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Symmetry:
    unit_axes: dict[str, int]  # tensor-name suffix -> axis indexed by hidden unit / rank component
    fixed: tuple[str, ...] = ()  # tensors of the module that no permutation moves
    sign_flip: bool = False  # units may also flip sign (no nonlinearity between the two factors)

    @property
    def first(self) -> str:
        """The tensor whose unit axis gives the module's width (r)."""
        return next(iter(self.unit_axes))


SYMMETRIES: dict[str, Symmetry] = {
    # Pfeiffer (seq_bn) and Houlsby (double_seq_bn: two modules per layer, after attention
    # and after the FFN) share one module shape; every module is aligned on its own
    "bottleneck": Symmetry({"adapter_down.0.weight": 0, "adapter_down.0.bias": 0, "adapter_up.weight": 1},
                           fixed=("adapter_up.bias",)),
    # adapters-library LoRA on a Linear: lora_A (r, in), lora_B (out, r)
    "lora": Symmetry({"lora_A": 0, "lora_B": 1}, sign_flip=True),
}
DOWN = "adapter_down.0.weight"


def kind_of(state: State) -> str:
    """The adapter kind whose tensors make up `state` ("bottleneck", "lora"), or "delta":
    a sparse or full delta on the base model's own weights (mera.deltas), which has no unit
    symmetry to align."""
    for kind, sym in SYMMETRIES.items():
        if any(k.endswith(sym.first) for k in state):
            return kind
    if state and all(k.endswith((".weight", ".bias")) and ".adapters." not in k and ".loras." not in k for k in state):
        return "delta"
    raise ValueError(f"unrecognised adapter tensors (e.g. {next(iter(state), 'none')!r}); "
                     f"accepted kinds: {', '.join(SYMMETRIES)}, delta")


def modules(state: State, kind: str = "bottleneck") -> dict[str, State]:
    """Group a state dict into modules: prefix -> {suffix: tensor}, in key order."""
    sym = SYMMETRIES[kind]
    out: dict[str, State] = {}
    for key, value in state.items():
        for suffix in (*sym.unit_axes, *sym.fixed):
            if key.endswith(suffix):
                out.setdefault(key[: -len(suffix)], {})[suffix] = value
                break
    return out


def flatten(mods: dict[str, State]) -> State:
    return {prefix + suffix: t for prefix, m in mods.items() for suffix, t in m.items()}


def hidden_size(module: State, kind: str = "bottleneck") -> int:
    sym = SYMMETRIES[kind]
    return module[sym.first].shape[sym.unit_axes[sym.first]]


def transport(module: State, plan: torch.Tensor, kind: str = "bottleneck", signs: torch.Tensor | None = None) -> State:
    """Move a module's hidden units with a (corrected) plan T̃ of shape r_i x r_anchor.

    Unit k of the result is Σ_j T̃[j, k] · unit j of the input (a permutation when T̃ is
    one), then multiplied by `signs[k]` where given (kinds with a sign symmetry only).
    """
    out = dict(module)
    for suffix, axis in SYMMETRIES[kind].unit_axes.items():
        t = torch.movedim(module[suffix], axis, 0)
        moved = torch.tensordot(plan.to(t.dtype), t, dims=([0], [0]))
        if signs is not None:
            moved = moved * signs.to(t.dtype).view(-1, *([1] * (moved.dim() - 1)))
        out[suffix] = torch.movedim(moved, 0, axis)
    return out


def permute(state: State, perms: dict[str, torch.Tensor], kind: str = "bottleneck",
            signs: dict[str, torch.Tensor] | None = None) -> State:
    """Permute (and, for kinds that allow it, sign-flip) the hidden units of every module
    (prefix -> index tensor); the function the adapter computes is unchanged."""
    out = dict(state)
    for prefix, perm in perms.items():
        for suffix, axis in SYMMETRIES[kind].unit_axes.items():
            key = prefix + suffix
            t = state[key].index_select(axis, perm)
            if signs is not None:
                shape = [1] * t.dim()
                shape[axis] = -1
                t = t * signs[prefix].to(t.dtype).view(shape)
            out[key] = t
    return out
