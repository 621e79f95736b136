"""Optimal-transport alignment of adapters' hidden units to an anchor (METHOD.md 3.3).

Per module, independently: unit features (weights, or calibration activations), a
Euclidean cost between the units of adapter i and the anchor's, a plan from POT (exact
EMD by default, Sinkhorn as a variant), the column correction, then the plan moves the
units of adapter i onto the anchor's. b_up lives in the frozen model's basis: never moved.
"""

from __future__ import annotations

import numpy as np
import torch

from mera.merge.symmetry import DOWN, hidden_size, modules, transport

State = dict[str, torch.Tensor]


def unit_features(module: State, features: str = "in") -> torch.Tensor:
    """Rows describe hidden units: [W_down | b_down] (in) or [W_down | b_down | W_upᵀ] (in+out)."""
    parts = [module[DOWN], module["adapter_down.0.bias"][:, None]]
    if features == "in+out":
        parts.append(module["adapter_up.weight"].T)
    return torch.cat(parts, dim=1).double()


def cost_matrix(f_i: torch.Tensor, f_a: torch.Tensor, metric: str = "euclidean", squared: bool = False) -> np.ndarray:
    if metric == "cosine":
        c = 1 - torch.nn.functional.normalize(f_i, dim=1) @ torch.nn.functional.normalize(f_a, dim=1).T
    else:
        c = torch.cdist(f_i, f_a)
        c = c**2 if squared else c
    return c.numpy()


def plan(cost: np.ndarray, solver: str = "emd", reg: float = 0.05) -> np.ndarray:
    """Corrected transport plan T̃ (columns sum to 1): a permutation matrix for exact OT."""
    import ot  # POT; 3 s import, so only when aligning

    r_i, r_a = cost.shape
    mu, nu = np.full(r_i, 1.0 / r_i), np.full(r_a, 1.0 / r_a)
    if solver == "emd":
        t = ot.emd(mu, nu, cost)
    elif solver == "sinkhorn":
        t = ot.sinkhorn(mu, nu, cost / max(cost.max(), 1e-12), reg)
    else:
        raise ValueError(f"solver {solver!r} is not one of: emd, sinkhorn")
    return t / t.sum(axis=0, keepdims=True)


def align_to_anchor(
    states: list[State],
    anchor: int = 0,
    *,
    features: str = "in",
    metric: str = "euclidean",
    squared: bool = False,
    solver: str = "emd",
    reg: float = 0.05,
    activations: list[dict[str, torch.Tensor]] | None = None,
) -> tuple[list[State], dict]:
    """Align every adapter's hidden units to `states[anchor]`, module by module.

    With `activations` (per adapter: module prefix -> S x r pre-activations on shared
    calibration tokens) units are compared by activations (Acts), else by weights (Wts).
    Returns the aligned states and diagnostics: per module the mean matched cost before
    (identity matching) and after alignment, and each adapter's plan as a permutation.
    """
    mods = [modules(s) for s in states]
    aligned = [dict(s) for s in states]
    diag: dict = {"anchor": anchor, "modules": {}}
    for prefix, anchor_mod in mods[anchor].items():
        f_a = activations[anchor][prefix].T.double() if activations else unit_features(anchor_mod, features)
        entry = {"cost_before": [], "cost_after": [], "plans": []}
        for i, m in enumerate(mods):
            if i == anchor:
                continue
            if hidden_size(m[prefix]) != hidden_size(anchor_mod):
                raise ValueError(f"{prefix}: adapter {i} has {hidden_size(m[prefix])} hidden units, the anchor "
                                 f"{hidden_size(anchor_mod)}; merge adapters of one reduction factor")
            f_i = activations[i][prefix].T.double() if activations else unit_features(m[prefix], features)
            cost = cost_matrix(f_i, f_a, metric, squared)
            t = plan(cost, solver, reg)
            entry["cost_before"].append(float(np.trace(cost)) / cost.shape[0])
            entry["cost_after"].append(float((cost * t).sum()) / cost.shape[1])
            entry["plans"].append(t.argmax(axis=0).tolist())  # anchor unit k <- unit plans[k] of adapter i
            for suffix, tensor in transport(m[prefix], torch.from_numpy(t)).items():
                aligned[i][prefix + suffix] = tensor
        diag["modules"][prefix] = entry
    return aligned, diag
