"""One training loop for every init: AdamW, linear decay with warmup, clipping, fp32.

Batches are padded to their longest member and bucketed by length: most sentences are
far shorter than max_length, and that is where CPU time goes.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import Callable

import pandas as pd
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class TrainSettings:
    epochs: int
    batch_size: int
    lr: float
    max_length: int
    seed: int
    min_steps: int = 0
    weight_decay: float = 0.0
    warmup: float = 0.06
    clip: float = 1.0


def encode(tokenizer, df: pd.DataFrame, max_length: int) -> list[dict[str, list[int]]]:
    first = df["sentence1"].astype(str).tolist()
    second = df["sentence2"].tolist()
    if all(s is None or (isinstance(s, float) and math.isnan(s)) for s in second):
        enc = tokenizer(first, truncation=True, max_length=max_length)
    else:
        enc = tokenizer(first, ["" if s is None else str(s) for s in second], truncation="longest_first",
                        max_length=max_length)
    keys = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in enc]
    return [{k: enc[k][i] for k in keys} for i in range(len(first))]


def collate(items: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(it["input_ids"]) for it in items)
    out = {}
    for key in items[0]:
        fill = pad_id if key == "input_ids" else 0
        out[key] = torch.tensor([it[key] + [fill] * (width - len(it[key])) for it in items])
    return out


def length_batches(lengths: list[int], batch_size: int, rng: random.Random | None) -> list[list[int]]:
    """Index batches of similar length; shuffled (within buckets and across) when rng is given."""
    order = list(range(len(lengths)))
    if rng is None:
        order.sort(key=lambda i: lengths[i])
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(order)
    bucket = batch_size * 32
    batches = []
    for start in range(0, len(order), bucket):
        chunk = sorted(order[start:start + bucket], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def train(model, tokenizer, df: pd.DataFrame, s: TrainSettings,
          extra_loss: Callable[[], torch.Tensor] | None = None) -> dict[str, float]:
    """Train the model's trainable parameters on df (plus `extra_loss()`, a regulariser, when
    given); returns loss, steps and throughput."""
    items = encode(tokenizer, df, s.max_length)
    labels = torch.tensor(df["label"].to_numpy(), dtype=torch.long)
    lengths = [len(it["input_ids"]) for it in items]
    per_epoch = math.ceil(len(items) / s.batch_size)
    total = max(s.epochs * per_epoch, s.min_steps)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    warmup = int(s.warmup * total)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: (step + 1) / max(1, warmup) if step < warmup else max(0.0, (total - step) / max(1, total - warmup))
    )
    rng = random.Random(s.seed)
    torch.manual_seed(s.seed)
    model.train()
    step, seen, losses, start = 0, 0, [], time.perf_counter()
    while step < total:
        for idx in length_batches(lengths, s.batch_size, rng):
            batch = collate([items[i] for i in idx], tokenizer.pad_token_id)
            logits = model(**batch).logits
            loss = F.cross_entropy(logits, labels[idx])
            if extra_loss is not None:
                loss = loss + extra_loss()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, s.clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            seen += len(idx)
            step += 1
            if step >= total:
                break
    elapsed = time.perf_counter() - start
    model.eval()
    tail = losses[-max(1, per_epoch):]
    return {"steps": step, "train_loss": sum(tail) / len(tail), "train_examples_per_s": seen / max(elapsed, 1e-9),
            "train_seconds": elapsed}
