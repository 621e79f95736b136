"""Optimal-transport alignment of adapters' hidden units to an anchor (METHOD.md 3.3, 6).

Per module, independently: a cost between the units of adapter i and the anchor's (from
weights, or from activations on shared calibration tokens), a plan from POT (exact EMD by
default, Sinkhorn as a variant), the column correction, then the plan moves the units of
adapter i onto the anchor's. What a plan may move is read from the symmetry table.
"""

from __future__ import annotations

import numpy as np
import torch

from mera.merge.methods import FEATURES, METRICS, SOLVERS
from mera.merge.symmetry import DOWN, SYMMETRIES, hidden_size, modules, transport

State = dict[str, torch.Tensor]
Acts = dict[str, torch.Tensor]  # module prefix -> S x r unit activations


def unit_features(module: State, features: str = "in") -> torch.Tensor:
    """Bottleneck units as rows: [W_down | b_down] (in) or [W_down | b_down | W_upᵀ] (in+out)."""
    if features not in FEATURES:
        raise ValueError(f"features {features!r} is not one of: {', '.join(FEATURES)}")
    parts = [module[DOWN], module["adapter_down.0.bias"][:, None]]
    if features == "in+out":
        parts.append(module["adapter_up.weight"].T)
    return torch.cat(parts, dim=1).double()


def _from_dots(dots: torch.Tensor, sq_i: torch.Tensor, sq_a: torch.Tensor, metric: str, squared: bool,
               sign_free: bool) -> np.ndarray:
    """Distances from inner products <f_i, f_a> and squared norms; `sign_free` takes the
    better of f_a and -f_a (kinds whose units may flip sign)."""
    if sign_free:
        dots = dots.abs()
    if metric == "cosine":
        c = 1 - dots / (sq_i.sqrt()[:, None] * sq_a.sqrt()[None, :]).clamp(min=1e-12)
    elif metric == "euclidean":
        c = (sq_i[:, None] + sq_a[None, :] - 2 * dots).clamp(min=0)
        c = c if squared else c.sqrt()
    else:
        raise ValueError(f"metric {metric!r} is not one of: {', '.join(METRICS)}")
    return c.numpy()


def cost_matrix(f_i: torch.Tensor, f_a: torch.Tensor, metric: str = "euclidean", squared: bool = False,
                sign_free: bool = False) -> np.ndarray:
    """C[j, k] = dist(unit j of adapter i, unit k of the anchor); rows of f are units.

    Euclidean distances are taken from differences, not from the |a|² + |b|² - 2ab shortcut,
    so identical units cost exactly 0."""
    f_i, f_a = f_i.double(), f_a.double()
    if metric == "euclidean":
        d2 = ((f_i[:, None, :] - f_a[None, :, :]) ** 2).sum(-1)
        if sign_free:
            d2 = torch.minimum(d2, ((f_i[:, None, :] + f_a[None, :, :]) ** 2).sum(-1))
        return (d2 if squared else d2.sqrt()).numpy()
    return _from_dots(f_i @ f_a.T, (f_i**2).sum(1), (f_a**2).sum(1), metric, squared, sign_free)


def lora_cost(mod_i: State, mod_a: State, metric: str = "euclidean", squared: bool = False) -> np.ndarray:
    """Distance between rank-1 pieces u vᵀ (u: column of B, v: row of A), without forming them:
    ‖u vᵀ − u' v'ᵀ‖² = ‖u‖²‖v‖² + ‖u'‖²‖v'‖² − 2 (uᵀu')(vᵀv'). Blind to the (u, v) -> (-u, -v)
    flip and to rescaling, which leave the piece unchanged."""
    a_i, b_i = mod_i["lora_A"].double(), mod_i["lora_B"].double()
    a_a, b_a = mod_a["lora_A"].double(), mod_a["lora_B"].double()
    dots = (b_i.T @ b_a) * (a_i @ a_a.T)
    sq_i = (b_i**2).sum(0) * (a_i**2).sum(1)
    sq_a = (b_a**2).sum(0) * (a_a**2).sum(1)
    return _from_dots(dots, sq_i, sq_a, metric, squared, sign_free=False)


def plan(cost: np.ndarray, solver: str = "emd", reg: float = 0.05) -> np.ndarray:
    """Corrected transport plan T̃ (columns sum to 1): a permutation matrix for exact OT."""
    import ot  # POT; 3 s import, so only when aligning

    r_i, r_a = cost.shape
    mu, nu = np.full(r_i, 1.0 / r_i), np.full(r_a, 1.0 / r_a)
    if solver == "emd":
        t = ot.emd(mu, nu, cost)
    elif solver == "sinkhorn":
        if not reg > 0:
            raise ValueError(f"reg must be a positive number, got {reg!r}")
        # log-domain iterations: stable down to the small reg that approaches exact OT
        t = ot.sinkhorn(mu, nu, cost / max(cost.max(), 1e-12), float(reg), method="sinkhorn_log", numItermax=10_000)
    else:
        raise ValueError(f"solver {solver!r} is not one of: {', '.join(SOLVERS)}")
    return t / t.sum(axis=0, keepdims=True)


def _module_cost(kind: str, mod_i: State, mod_a: State, acts_i: torch.Tensor | None, acts_a: torch.Tensor | None,
                 features: str, metric: str, squared: bool) -> np.ndarray:
    sign_free = SYMMETRIES[kind].sign_flip
    if acts_i is not None:
        return cost_matrix(acts_i.T, acts_a.T, metric, squared, sign_free)
    if kind == "lora":
        return lora_cost(mod_i, mod_a, metric, squared)
    return cost_matrix(unit_features(mod_i, features), unit_features(mod_a, features), metric, squared)


def _signs(kind: str, moved: State, mod_a: State, acts_moved: torch.Tensor | None,
           acts_a: torch.Tensor | None) -> torch.Tensor | None:
    """+-1 per anchor unit: flip a matched unit that points against the anchor's (LoRA)."""
    if not SYMMETRIES[kind].sign_flip:
        return None
    if acts_moved is not None:
        dots = (acts_moved.double() * acts_a.double()).sum(0)
    else:
        dots = (moved["lora_A"].double() * mod_a["lora_A"].double()).sum(1)
    return torch.where(dots < 0, -1.0, 1.0)


def align_to_anchor(
    states: list[State],
    anchor: State,
    *,
    kind: str = "bottleneck",
    skip: int | None = None,
    acts: list[Acts] | None = None,
    anchor_acts: Acts | None = None,
    features: str = "in",
    metric: str = "euclidean",
    squared: bool = False,
    solver: str = "emd",
    reg: float = 0.05,
) -> tuple[list[State], dict]:
    """Align every adapter's hidden units to `anchor`, module by module.

    Args:
        states: the adapters to align; `states[skip]` is the anchor itself and kept as is.
        acts / anchor_acts: per adapter, module prefix -> S x r unit activations on the same
            calibration tokens; units are then compared by activations (Acts), else by
            weights (Wts).
        features, metric, squared, solver, reg: the ground cost and the OT solver.
    Returns:
        The aligned states and diagnostics: per module the mean matched cost before
        (identity matching) and after alignment, each adapter's plan as a permutation
        (anchor unit k <- unit plans[k] of the adapter), and one cost matrix with its plan.
    """
    if kind == "lora" and solver != "emd":
        raise ValueError("LoRA alignment needs an exact assignment (solver emd): sign fixes are undefined for a "
                         "soft plan")
    mods = [modules(s, kind) for s in states]
    aligned = [dict(s) for s in states]
    diag: dict = {"modules": {}}
    for prefix, mod_a in modules(anchor, kind).items():
        a_a = anchor_acts[prefix] if anchor_acts is not None else None
        entry = {"cost_before": [], "cost_after": [], "plans": []}
        for i, mod in enumerate(mods):
            if i == skip:
                continue
            m = mod[prefix]
            if hidden_size(m, kind) != hidden_size(mod_a, kind):
                raise ValueError(f"{prefix}: adapter {i} has {hidden_size(m, kind)} hidden units, the anchor "
                                 f"{hidden_size(mod_a, kind)}; merge adapters of one size (reduction factor / rank)")
            a_i = acts[i][prefix] if acts is not None else None
            cost = _module_cost(kind, m, mod_a, a_i, a_a, features, metric, squared)
            t = plan(cost, solver, reg)
            t_torch = torch.from_numpy(t)
            moved = transport(m, t_torch, kind)
            signs = _signs(kind, moved, mod_a, a_i @ t_torch.to(a_i.dtype) if a_i is not None else None, a_a)
            if signs is not None:
                moved = transport(m, t_torch, kind, signs)
                entry.setdefault("flipped", []).append(int((signs < 0).sum()))
            for suffix, tensor in moved.items():
                aligned[i][prefix + suffix] = tensor
            entry["cost_before"].append(float(np.trace(cost)) / min(cost.shape))
            entry["cost_after"].append(float((cost * t).sum()) / cost.shape[1])
            entry["plans"].append(t.argmax(axis=0).tolist())
            if "example" not in diag:
                diag["example"] = {"module": prefix, "adapter": i, "cost": np.round(cost, 5).tolist(),
                                   "plan": np.round(t, 5).tolist()}
        diag["modules"][prefix] = entry
    return aligned, diag


def total_cost(diag: dict) -> float:
    """Σ over modules of the mean matched cost after alignment (the medoid's objective)."""
    return float(sum(sum(e["cost_after"]) for e in diag["modules"].values()))
