"""Adapters that are deltas on the base model's own weights: `sparse` and `full`.

sparse: before training, a mask per linear weight of the encoder is chosen from a saliency
score computed on a few batches of the task's own data (default |w * g|; `grad`: |g|;
`random`), keeping the top `density` fraction of each matrix (exactly round(density * numel)
entries per matrix; ties broken by index). Only those entries train: their gradients are
masked, the rest of the model is frozen, and the optimiser has no weight decay, so every
other entry stays bit-identical. The default density gives the trainable count of a
Pfeiffer bottleneck adapter of the same `reduction_factor`.

full: every base weight trains (dense fine-tuning); its delta is all of θ - θ0.

Both are saved as a delta (safetensors): sparse as indices + float64 values per matrix
(θ0 + δ is then exactly θ) with its mask rule and density in `delta_config.json`; full as
dense fp32 tensors. Loading adds the delta onto the base weights. For merging, `read_delta`
gives a dense state dict (zeros off the mask), which the merge registry reduces like any
other ("delta" kind).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mera.heads import ADAPTER, train_only_head

DELTA_FILE = "delta.safetensors"
DELTA_CONFIG = "delta_config.json"
SALIENCY = ("weight-grad", "grad", "random")
KINDS = ("sparse", "full")


class DeltaError(ValueError):
    """A delta directory that cannot be read or applied."""


def linear_weights(model) -> dict[str, torch.nn.Parameter]:
    """The encoder's linear weight matrices (attention q/k/v/out, FFN in/out), keyed by their
    parameter names in `model.base_model` (the keys of every delta state)."""
    out = {}
    for name, mod in model.base_model.named_modules():
        if isinstance(mod, torch.nn.Linear) and ".encoder." in f".{name}." and "adapter" not in name \
                and "lora" not in name:
            out[f"{name}.weight"] = mod.weight
    return out


def bottleneck_count(hidden: int, layers: int, reduction_factor: int) -> int:
    """Trainable parameters of a Pfeiffer adapter: per layer down (h x r + r) and up (r x h + h)."""
    r = hidden // reduction_factor
    return layers * (2 * hidden * r + r + hidden)


def default_density(model, reduction_factor: int) -> float:
    """The density whose trainable count matches a bottleneck adapter of `reduction_factor`."""
    cfg = model.config
    total = sum(w.numel() for w in linear_weights(model).values())
    return bottleneck_count(cfg.hidden_size, cfg.num_hidden_layers, reduction_factor) / total


def saliency(model, batches, rule: str = "weight-grad", seed: int = 0) -> dict[str, torch.Tensor]:
    """A score per entry of every linear weight: |w * g| or |g| summed over `batches`
    (dicts of model inputs with `labels`), or seeded uniform noise."""
    weights = linear_weights(model)
    if rule not in SALIENCY:
        raise DeltaError(f"saliency {rule!r} is not one of: {', '.join(SALIENCY)}")
    if rule == "random":
        g = torch.Generator().manual_seed(seed)
        return {n: torch.rand(w.shape, generator=g) for n, w in weights.items()}
    flags = {n: w.requires_grad for n, w in weights.items()}
    for w in weights.values():
        w.requires_grad_(True)
        w.grad = None
    grads = {n: torch.zeros_like(w) for n, w in weights.items()}
    model.eval()  # no dropout: the same batches give the same mask
    for batch in batches:
        batch = dict(batch)
        labels = batch.pop("labels")
        loss = torch.nn.functional.cross_entropy(model(**batch).logits, labels)
        loss.backward()
        for n, w in weights.items():
            grads[n] += w.grad.abs() if rule == "grad" else (w.grad * w.detach()).abs()
            w.grad = None
    for n, w in weights.items():
        w.requires_grad_(flags[n])
    return grads


def choose_masks(scores: dict[str, torch.Tensor], density: float) -> dict[str, torch.Tensor]:
    """Per matrix, the top round(density * numel) entries by score (at least one)."""
    if not 0 < density <= 1:
        raise DeltaError(f"density must be in (0, 1], got {density!r}")
    masks = {}
    for name, s in scores.items():
        k = max(1, round(density * s.numel()))
        flat = torch.zeros(s.numel(), dtype=torch.bool)
        # stable order: equal scores are broken by the lower index
        order = torch.argsort(s.flatten().double(), descending=True, stable=True)
        flat[order[:k]] = True
        masks[name] = flat.view_as(s)
    return masks


def train_only_masked(model, masks: dict[str, torch.Tensor]) -> list:
    """Freeze all but the masked entries of the masked weights (and the head, which the
    caller keeps trainable): gradients outside a mask are zeroed by a hook."""
    train_only_head(model)
    weights = linear_weights(model)
    handles = []
    for name, mask in masks.items():
        w = weights[name]
        w.requires_grad_(True)
        m = mask.to(w.device, w.dtype)
        handles.append(w.register_hook(lambda g, m=m: g * m))
    return handles


def snapshot(model) -> dict[str, torch.Tensor]:
    """The base weights before training (what a delta is taken against)."""
    return {n: p.detach().clone() for n, p in model.base_model.named_parameters()}


def _base_params(model) -> dict[str, torch.nn.Parameter]:
    return dict(model.base_model.named_parameters())


def delta_state(model, before: dict[str, torch.Tensor], masks: dict[str, torch.Tensor] | None = None
                ) -> dict[str, torch.Tensor]:
    """θ - θ0: over the masked weights for sparse (zeros off the mask; float64, so that
    θ0 + δ gives θ back bit for bit), over every changed base tensor for full (fp32)."""
    now = _base_params(model)
    if masks is not None:
        return {n: now[n].detach().cpu().double() - before[n].cpu().double() for n in masks}
    names = [n for n in before if not torch.equal(now[n].detach().cpu(), before[n].cpu())]
    return {n: now[n].detach().cpu() - before[n].cpu() for n in names}


def save_delta(out_dir: Path, state: dict[str, torch.Tensor], kind: str, info: dict,
               masks: dict[str, torch.Tensor] | None = None) -> None:
    """Sparse: `<name>.indices` (flat int64) + `<name>.values`; full: dense tensors."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors, shapes = {}, {}
    for name, d in state.items():
        if not torch.isfinite(d).all():
            raise DeltaError(f"delta {name} is not finite; nothing was saved")
        shapes[name] = list(d.shape)
        if kind == "sparse":
            mask = masks[name] if masks is not None else d != 0
            idx = mask.flatten().nonzero().squeeze(1)
            tensors[f"{name}.indices"] = idx.to(torch.int64).contiguous()
            tensors[f"{name}.values"] = d.flatten()[idx].contiguous()
        else:
            tensors[name] = d.contiguous()
    save_file(tensors, str(out_dir / DELTA_FILE))
    (out_dir / DELTA_CONFIG).write_text(json.dumps({"kind": kind, "shapes": shapes, **info}, indent=1))


def _open(delta_dir: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(delta_config.json, the raw safetensors tensors); one clear error for a missing or cut delta."""
    from safetensors.torch import load_file

    delta_dir = Path(delta_dir)
    cfg_file, data_file = delta_dir / DELTA_CONFIG, delta_dir / DELTA_FILE
    if not cfg_file.is_file() or not data_file.is_file():
        raise DeltaError(f"{delta_dir} is not a saved delta adapter (needs {DELTA_CONFIG} and {DELTA_FILE})")
    try:
        return json.loads(cfg_file.read_text()), load_file(str(data_file))
    except Exception as exc:  # json / safetensors raise several types for a cut file
        raise DeltaError(f"{delta_dir}: unreadable delta ({exc})") from None


def _scatter(shape: list[int], indices: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    flat = torch.zeros(int(torch.tensor(shape).prod()), dtype=values.dtype)
    flat[indices] = values
    return flat.view(shape)


def read_delta(delta_dir: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config, dense delta state); a sparse delta is zero off its mask."""
    meta, raw = _open(delta_dir)
    if meta["kind"] != "sparse":
        return meta, {name: raw[name] for name in meta["shapes"]}
    return meta, {name: _scatter(shape, raw[f"{name}.indices"], raw[f"{name}.values"])
                  for name, shape in meta["shapes"].items()}


def masks_of(delta_dir: Path) -> dict[str, torch.Tensor]:
    """The stored masks of a sparse delta (entries it may change)."""
    meta, raw = _open(delta_dir)
    return {name: _scatter(shape, raw[f"{name}.indices"], torch.ones(len(raw[f"{name}.indices"]), dtype=torch.bool))
            for name, shape in meta["shapes"].items()}


@torch.no_grad()
def apply_delta(model, state: dict[str, torch.Tensor]) -> None:
    """Add a (dense) delta onto the model's base weights (summed in float64: a float64
    sparse delta restores the trained weights exactly)."""
    params = _base_params(model)
    unknown = sorted(set(state) - set(params))
    if unknown:
        raise DeltaError(f"delta has tensors the base model lacks, e.g. {unknown[0]!r} (another base model?)")
    for name, d in state.items():
        if d.shape != params[name].shape:
            raise DeltaError(f"delta {name} has shape {tuple(d.shape)}, the base model {tuple(params[name].shape)}")
        p = params[name]
        p.copy_((p.double() + d.to(p.device, torch.float64)).to(p.dtype))


def prepare_training(model, tokenizer, df, kind: str, *, density: float | None, rule: str, reduction_factor: int,
                     max_length: int, batches: int = 4, batch_size: int = 16, seed: int = 0):
    """Make `model` (built without an adapter) train as a `kind` delta adapter. Sparse: the
    mask comes from `batches` batches of df (seeded). Returns (θ0 snapshot, masks or None,
    info for the manifest)."""
    from mera.tokens import encode

    before = snapshot(model)
    if kind == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        n = sum(p.numel() for p in model.base_model.parameters())
        return before, None, {"kind": "full", "trainable_base": n}
    density = default_density(model, reduction_factor) if density is None else float(density)
    sample = df.sample(n=min(len(df), batches * batch_size), random_state=seed)
    items = encode(tokenizer, sample, max_length)
    labels = torch.tensor(sample["label"].to_numpy(), dtype=torch.long)
    chunks = [list(range(i, min(i + batch_size, len(items)))) for i in range(0, len(items), batch_size)]
    data = [{**items.batch(idx, tokenizer.pad_token_id), "labels": labels[idx]} for idx in chunks]
    masks = choose_masks(saliency(model, data, rule, seed), density)
    train_only_masked(model, masks)
    n = int(sum(m.sum() for m in masks.values()))
    return before, masks, {"kind": "sparse", "saliency": rule, "density": density, "trainable_base": n,
                           "saliency_examples": len(sample), "mask_rule": f"top-k per matrix by {rule}"}


def save_trained(model, out_dir: Path, before: dict[str, torch.Tensor], masks, info: dict) -> None:
    """The trained delta (with its mask rule and density) plus the task's head."""
    model = model.to("cpu")
    save_delta(out_dir, delta_state(model, before, masks), info["kind"], info, masks)
    model.save_head(str(Path(out_dir) / "head"), ADAPTER)
