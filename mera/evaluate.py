"""Metrics on a labelled split: accuracy and macro-F1."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from mera.train import collate, encode, length_batches


@torch.inference_mode()
def predict(model, tokenizer, df: pd.DataFrame, max_length: int, batch_size: int = 64) -> np.ndarray:
    """Logits for every row of df, in df's order."""
    items = encode(tokenizer, df, max_length)
    model.eval()
    out = np.zeros((len(items), 0), dtype=np.float32)
    for idx in length_batches([len(it["input_ids"]) for it in items], batch_size, rng=None):
        logits = model(**collate([items[i] for i in idx], tokenizer.pad_token_id)).logits.float().numpy()
        if out.shape[1] == 0:
            out = np.zeros((len(items), logits.shape[1]), dtype=np.float32)
        out[idx] = logits
    return out


def scores(labels: np.ndarray, preds: np.ndarray, num_labels: int) -> dict[str, float]:
    f1s = []
    for c in range(num_labels):
        tp = np.sum((preds == c) & (labels == c))
        fp = np.sum((preds == c) & (labels != c))
        fn = np.sum((preds != c) & (labels == c))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return {"accuracy": float(np.mean(preds == labels)), "macro_f1": float(np.mean(f1s))}


def evaluate(model, tokenizer, df: pd.DataFrame, num_labels: int, max_length: int) -> dict[str, float]:
    logits = predict(model, tokenizer, df, max_length)
    return scores(df["label"].to_numpy(), logits.argmax(axis=1), num_labels)
