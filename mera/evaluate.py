"""Metrics on a labelled split: accuracy and macro-F1."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from mera.tokens import Encoded, encode
from mera.train import autocast, length_batches


def _batched(model, tokenizer, items: Encoded, batch_size: int, device: str, bf16: bool, output) -> torch.Tensor | None:
    """`output(model outputs)` (fp32) for every item, in items' order, batched by length in
    eval mode; None for no items. Results stay on the device until the end."""
    model.to(device)
    model.eval()
    chunks, order = [], []
    for idx in length_batches(items.lengths, batch_size, rng=None):
        batch = {k: v.to(device, non_blocking=True) for k, v in items.batch(idx, tokenizer.pad_token_id).items()}
        with autocast(device, bf16):
            chunks.append(output(model(**batch, output_hidden_states=output is _first_token)).float())
        order += idx
    if not chunks:
        return None
    rows = torch.cat(chunks).cpu()
    out = torch.empty_like(rows)
    out[order] = rows
    return out


def _logits(outputs) -> torch.Tensor:
    return outputs.logits


def _first_token(outputs) -> torch.Tensor:
    return outputs.hidden_states[-1][:, 0]


@torch.inference_mode()
def predict(model, tokenizer, df: pd.DataFrame, max_length: int, batch_size: int = 64, *,
            items: Encoded | None = None, device: str = "cpu", bf16: bool = False) -> np.ndarray:
    """Logits (fp32) for every row of df, in df's order; `items` are df's rows already tokenised."""
    items = encode(tokenizer, df, max_length) if items is None else items
    logits = _batched(model, tokenizer, items, batch_size, device, bf16, _logits)
    return logits.numpy() if logits is not None else np.zeros((0, 0), dtype=np.float32)


@torch.no_grad()  # not inference_mode: heads are trained on these features
def features(model, tokenizer, items: Encoded, batch_size: int = 64, *, device: str = "cpu",
             bf16: bool = False) -> torch.Tensor:
    """What a classification head reads: the last layer's first-token state (adapters'
    ClassificationHead without pooler), one fp32 row per item, in items' order (eval mode)."""
    feats = _batched(model, tokenizer, items, batch_size, device, bf16, _first_token)
    return feats if feats is not None else torch.zeros(0, model.config.hidden_size)


def scores(labels: np.ndarray, preds: np.ndarray, num_labels: int) -> dict[str, float]:
    f1s = []
    for c in range(num_labels):
        tp = np.sum((preds == c) & (labels == c))
        fp = np.sum((preds == c) & (labels != c))
        fn = np.sum((preds != c) & (labels == c))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return {"accuracy": float(np.mean(preds == labels)), "macro_f1": float(np.mean(f1s))}


def evaluate(model, tokenizer, df: pd.DataFrame, num_labels: int, max_length: int, **kw) -> dict[str, float]:
    """Accuracy and macro-F1 of the model on df; `kw` as for predict (items, device, bf16, batch_size)."""
    logits = predict(model, tokenizer, df, max_length, **kw)
    return scores(df["label"].to_numpy(), logits.argmax(axis=1), num_labels)
