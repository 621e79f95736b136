"""Build the model a few-shot fine-tune starts from, one function per init kind
(mera.inits), and choose the best single source on a dev sample.

Everything trains in the same loop (mera.train) afterwards; only what is trainable, the
learning rate and (for AdapterFusion) an extra loss term differ.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from mera.artifacts import ADAPTER_SUBDIR
from mera.config import SweepConfig
from mera.inits import Init
from mera.registry import load


@dataclass
class Start:
    model: object
    tokenizer: object
    extra_loss: Callable[[], torch.Tensor] | None = None
    info: dict = field(default_factory=dict)  # goes into the manifest (chosen source, dev scores, ...)
    saves: str = "adapter"  # what is worth keeping: "adapter" (adapter + head), "head", or "none"


def _adapter_dir(result: dict) -> Path:
    return Path(result["path"]) / ADAPTER_SUBDIR


def start(cfg: SweepConfig, init: Init, num_labels: int, seed: int, upstream: list[dict],
          train_df: pd.DataFrame, dev_df: pd.DataFrame | None) -> Start:
    """The model for `init`, from its kind's builder; `upstream` holds the results it depends
    on: the merge for merge inits, the source adapter for adapter-from, the group's adapters
    for best-source and fusion."""
    return load(init.spec.build)(cfg, num_labels, seed, upstream, train_df, dev_df)


def head_only(cfg: SweepConfig, num_labels: int, seed: int, *_) -> Start:
    from mera.models import build_model

    return Start(*build_model(cfg.model, num_labels, seed=seed, adapter=False), saves="head")


def full_model(cfg: SweepConfig, num_labels: int, seed: int, *_) -> Start:
    from mera.models import build_model

    model, tok = build_model(cfg.model, num_labels, seed=seed, adapter=False)
    for p in model.parameters():
        p.requires_grad = True
    return Start(model, tok, saves="none")


def fresh_adapter(cfg: SweepConfig, num_labels: int, seed: int, *_) -> Start:
    from mera.models import build_model

    return Start(*build_model(cfg.model, num_labels, seed=seed))


def from_adapter(cfg: SweepConfig, num_labels: int, seed: int, upstream: list[dict], *_) -> Start:
    """One upstream adapter (a source's or a merge's), trained on with a fresh head."""
    from mera.models import build_model

    (source,) = upstream
    return Start(*build_model(cfg.model, num_labels, adapter_dir=_adapter_dir(source), seed=seed))


def frozen_adapter(cfg: SweepConfig, num_labels: int, seed: int, upstream: list[dict], *_) -> Start:
    from mera.models import train_only_head

    st = from_adapter(cfg, num_labels, seed, upstream)
    train_only_head(st.model)
    return Start(st.model, st.tokenizer, saves="head")


def best_source_adapter(cfg: SweepConfig, num_labels: int, seed: int, upstream: list[dict],
                        train_df: pd.DataFrame, dev_df: pd.DataFrame) -> Start:
    chosen, scores = best_source(cfg, num_labels, seed, upstream, train_df, dev_df)
    st = from_adapter(cfg, num_labels, seed, [chosen])
    st.info = {"chosen_source": chosen["task"], "dev_scores": scores, "n_dev": len(dev_df)}
    return st


def fusion(cfg: SweepConfig, num_labels: int, seed: int, members: list[dict], *_) -> Start:
    """AdapterFusion (Pfeiffer et al. 2021, "dynamic": query, key, value; V starts at the
    identity) over the group's frozen source adapters, plus a fresh head; the loss gets
    `fusion_reg * Σ_l ‖I - V_l‖²` (METHOD.md 5)."""
    from adapters.composition import Fuse

    from mera.models import BUILD_LOCK, build_model, head_parameters, read_adapter

    model, tok = build_model(cfg.model, num_labels, seed=seed, adapter=False)
    names = [m["task"] for m in members]
    with BUILD_LOCK:
        torch.manual_seed(seed)
        for m in members:
            read_adapter(_adapter_dir(m))  # one clear error for a broken directory
            model.load_adapter(str(_adapter_dir(m)), load_as=m["task"], with_head=False)
        fuse = Fuse(*names)
        model.add_adapter_fusion(fuse, config="dynamic")
    model.set_active_adapters(fuse)
    model.train_adapter_fusion(fuse)
    for p in head_parameters(model):
        p.requires_grad = True
    weight = cfg.fewshot.fusion_reg

    def regulariser() -> torch.Tensor:
        return sum(((torch.eye(v.shape[0], device=v.device) - v) ** 2).sum() for v in fusion_values(model)) * weight

    return Start(model, tok, extra_loss=regulariser if weight else None, info={"fused": names}, saves="none")


def fusion_values(model) -> list[torch.Tensor]:
    """The value matrices V_l of every AdapterFusion layer."""
    return [m.value.weight for name, m in model.named_modules()
            if "adapter_fusion_layer" in name and hasattr(m, "value") and m.value is not None]


@torch.inference_mode()
def _cls_features(model, tok, df: pd.DataFrame, max_length: int) -> torch.Tensor:
    from mera.tokens import encode

    items = encode(tok, df, max_length)
    feats = []
    model.eval()
    for i in range(0, len(items), 32):
        batch = items.batch(range(i, min(i + 32, len(items))), tok.pad_token_id)
        out = model.base_model(**batch)
        feats.append(out[0][:, 0])  # the [CLS] hidden state of the last layer
    return torch.cat(feats).float()


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, dev_x: torch.Tensor, dev_y: torch.Tensor,
                 num_labels: int, seed: int, steps: int = 200) -> float:
    """Dev accuracy of a logistic-regression probe trained on frozen features (full batch, AdamW)."""
    g = torch.Generator().manual_seed(seed)
    mean, std = train_x.mean(0), train_x.std(0).clamp(min=1e-6)
    w = torch.zeros(train_x.shape[1], num_labels, requires_grad=True)
    b = torch.zeros(num_labels, requires_grad=True)
    with torch.no_grad():
        w.normal_(0, 0.01, generator=g)
    opt = torch.optim.AdamW([w, b], lr=1e-2, weight_decay=1e-2)
    x = (train_x - mean) / std
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(x @ w + b, train_y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = (((dev_x - mean) / std) @ w + b).argmax(1)
    return float((pred == dev_y).float().mean())


def best_source(cfg: SweepConfig, num_labels: int, seed: int, members: list[dict], train_df: pd.DataFrame,
                dev_df: pd.DataFrame) -> tuple[dict, dict[str, float]]:
    """The member adapter whose frozen [CLS] features, probed on the K-shot training sample,
    score best on the K-shot dev sample (ties: alphabetical). Reads no validation data."""
    from mera.models import build_model

    y_train = torch.tensor(train_df["label"].to_numpy())
    y_dev = torch.tensor(dev_df["label"].to_numpy())
    scores = {}
    for m in sorted(members, key=lambda r: r["task"]):
        model, tok = build_model(cfg.model, num_labels, adapter_dir=_adapter_dir(m), seed=seed)
        x_train = _cls_features(model, tok, train_df, cfg.model.max_length)
        x_dev = _cls_features(model, tok, dev_df, cfg.model.max_length)
        scores[m["task"]] = linear_probe(x_train, y_train, x_dev, y_dev, num_labels, seed)
    best = max(sorted(scores), key=lambda t: scores[t])
    return next(m for m in members if m["task"] == best), scores
