"""Reducers: how N (aligned) adapters become one, tensor by tensor (METHOD.md 3.2, 7).

Task vectors are taken against θ_0 = 0: independently initialised adapters share no
pretrained value, so τ_i = θ_i, task arithmetic with λ = 1/N is Avg and with λ = 1 is Sum.
Every reducer takes `list[state]` and returns a state; its keyword arguments are the
method's parameters (declared in mera.merge.methods.REDUCTIONS).
"""

from __future__ import annotations

import zlib

import torch

from mera.merge.methods import AVG_OVER, SIGN_RULES, TRIM_SCOPES

State = dict[str, torch.Tensor]


def _stack(states: list[State], key: str) -> torch.Tensor:
    return torch.stack([s[key] for s in states])


def reduce_sum(states: list[State]) -> State:
    """θ = Σ_i θ_i (MerA's Sum)."""
    return {k: _stack(states, k).sum(0) for k in states[0]}


def reduce_avg(states: list[State], over: str = "all") -> State:
    """θ = (1/N) Σ_i θ_i (MerA's Avg). over="touching": each entry is averaged over the
    adapters whose value there is nonzero, i.e. for sparse deltas the adapters whose mask
    holds it (entries no adapter touches stay 0); the merge registry picks it for deltas."""
    if over not in AVG_OVER:
        raise ValueError(f"over {over!r} is not one of: {', '.join(AVG_OVER)}")
    if over == "all":
        return {k: _stack(states, k).mean(0) for k in states[0]}
    out = {}
    for k in states[0]:
        x = _stack(states, k)
        out[k] = x.sum(0) / (x != 0).sum(0).clamp(min=1).to(x.dtype)
    return out


def task_arithmetic(states: list[State], lam: float | None = None, weights: list[float] | None = None) -> State:
    """θ = λ Σ_i w_i τ_i (Ilharco et al. 2023).

    Args:
        lam: scaling λ; default 1/N (then uniform weights give Avg).
        weights: per-source w_i, default 1 each; negative values subtract a task.
    """
    n = len(states)
    lam = 1.0 / n if lam is None else float(lam)
    w = torch.tensor(weights if weights is not None else [1.0] * n, dtype=torch.float64)
    if len(w) != n:
        raise ValueError(f"weights has {len(w)} values for {n} adapters")
    return {k: (lam * torch.tensordot(w.to(states[0][k].dtype), _stack(states, k), dims=1)) for k in states[0]}


def trim(tau: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the top `density` fraction of entries by magnitude, zero the rest (TIES step 1)."""
    if density >= 1.0:
        return tau.clone()
    k = int(round(density * tau.numel()))
    if k <= 0:
        return torch.zeros_like(tau)
    flat = tau.flatten()
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[flat.abs().topk(k).indices] = True
    return torch.where(keep, flat, torch.zeros_like(flat)).view_as(tau)


def elect_sign(taus: torch.Tensor, rule: str = "total") -> torch.Tensor:
    """Per entry the sign the adapters agree on (TIES step 2); `taus` is N x ...

    total: sign of the sum; frequency: sign held by more non-zero entries.
    """
    if rule == "total":
        return torch.sign(taus.sum(0))
    if rule == "frequency":
        return torch.sign(torch.sign(taus).sum(0))
    raise ValueError(f"sign {rule!r} is not one of: {', '.join(SIGN_RULES)}")


def disjoint_mean(taus: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """Mean over only the non-zero entries whose sign equals the elected one (TIES step 3)."""
    agree = (torch.sign(taus) == sign) & (taus != 0)
    count = agree.sum(0).clamp(min=1)
    return (taus * agree).sum(0) / count


def drop(tau: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """DARE: drop each entry with probability p, rescale survivors by 1/(1-p) (expectation kept)."""
    if p <= 0.0:
        return tau.clone()
    if p >= 1.0:
        raise ValueError(f"p must be below 1 (the fraction dropped), got {p}")
    keep = torch.rand(tau.shape, generator=generator) >= p
    return torch.where(keep, tau / (1.0 - p), torch.zeros_like(tau))


def _check_fraction(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def _trimmed(states: list[State], density: float, scope: str) -> list[State]:
    if scope == "tensor":
        return [{k: trim(v, density) for k, v in s.items()} for s in states]
    if scope != "global":
        raise ValueError(f"trim_scope {scope!r} is not one of: {', '.join(TRIM_SCOPES)}")
    out = []
    for s in states:
        keys = list(s)
        flat = trim(torch.cat([s[k].flatten() for k in keys]), density)
        parts = flat.split([s[k].numel() for k in keys])
        out.append({k: p.view_as(s[k]) for k, p in zip(keys, parts)})
    return out


def _sign_merge(states: list[State], sign: str, lam: float) -> State:
    merged = {}
    for k in states[0]:
        taus = _stack(states, k)
        merged[k] = lam * disjoint_mean(taus, elect_sign(taus, sign))
    return merged


def ties(states: list[State], density: float = 0.2, sign: str = "total", lam: float = 1.0,
         trim_scope: str = "tensor") -> State:
    """TIES-merging (Yadav et al. 2023): trim, elect sign, disjoint mean, scale by λ.

    Args:
        density: fraction of each task vector kept by magnitude (1 keeps all).
        sign: sign election rule, "total" (sign of the sum) or "frequency".
        lam: scaling of the merged task vector.
        trim_scope: "tensor" (as PEFT) or "global" (as the paper: the whole adapter).
    """
    trimmed = _trimmed(states, _check_fraction("density", density), trim_scope)
    return _sign_merge(trimmed, sign, float(lam))


def drop_all(states: list[State], p: float, seed: int) -> list[State]:
    """DARE's drop-and-rescale on every tensor of every adapter, one seeded mask each."""
    p = _check_fraction("p", p)
    out = []
    for i, s in enumerate(states):
        dropped = {}
        for k in sorted(s):  # one generator per (adapter, tensor): masks do not depend on key order
            g = torch.Generator().manual_seed(int(seed) * 1_000_003 + i * 7919 + zlib.crc32(k.encode()))
            dropped[k] = drop(s[k], p, g)
        out.append({k: dropped[k] for k in s})
    return out


def dare_linear(states: list[State], p: float = 0.5, lam: float | None = None, seed: int = 0) -> State:
    """DARE (Yu et al. 2023) then task arithmetic.

    Args:
        p: drop probability per entry (0.5 for 0.1-0.9 M-parameter adapters, METHOD.md 7).
        lam: task-arithmetic scaling; default 1/N.
        seed: seeds every Bernoulli mask (one per adapter and tensor).
    """
    return task_arithmetic(drop_all(states, p, seed), lam=lam)


def dare_ties(states: list[State], p: float = 0.5, sign: str = "total", lam: float = 1.0, seed: int = 0) -> State:
    """DARE then TIES' sign election and disjoint mean (no magnitude trim: DARE did the sparsifying)."""
    return _sign_merge(drop_all(states, p, seed), sign, float(lam))

