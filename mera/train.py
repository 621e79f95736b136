"""One training loop for every init: AdamW, linear decay with warmup, clipping.

Batches are padded to their longest member and bucketed by length: most sentences are
far shorter than max_length, and that is where CPU time goes. Rows come tokenised
(mera.tokens, cached per task). The loop never waits on the device: losses stay on it
until the end. On CUDA it runs under bf16 autocast when asked (`run.precision`).
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F

from mera.config import ConfigError
from mera.tokens import Encoded, encode


def set_threads(n: int) -> None:
    """torch's threads for this process's units, set only when they differ from torch's own
    count: `torch.set_num_threads` also pins MKL to that many threads for every matrix
    product, even the small ones of a few-shot step, which MKL alone runs on one thread.
    Pinned, a smoke sweep opened ~4.3 M OpenMP parallel regions instead of ~0.16 M (counted
    with a shim on GOMP_parallel) and its units ran 2-7 % slower (BENCHMARKS.md)."""
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


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
    device: str = "cpu"
    bf16: bool = False


@dataclass(frozen=True)
class Runtime:
    """Where units run: the device, bf16 autocast or not, the evaluation batch size."""

    device: str = "cpu"
    bf16: bool = False
    eval_batch_size: int = 64

    @classmethod
    def of(cls, device: str = "auto", precision: str = "auto", eval_batch_size: int | None = None) -> Runtime:
        """Resolve `run.device` / `run.precision` (auto: CUDA and bf16 when a GPU is seen)."""
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        elif device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("run.device is 'cuda' but torch sees no CUDA GPU; accepted here: auto, cpu")
        if precision == "bf16" and device != "cuda":
            raise ConfigError("run.precision 'bf16' is for CUDA (autocast); accepted on the CPU: auto, fp32")
        bf16 = device == "cuda" and (precision == "bf16" or (precision == "auto" and torch.cuda.is_bf16_supported()))
        return cls(device, bf16, eval_batch_size or (512 if device == "cuda" else 64))

    def describe(self) -> dict:
        name = torch.cuda.get_device_name() if self.device == "cuda" else "cpu"
        return {"device": self.device, "device_name": name, "precision": "bf16" if self.bf16 else "fp32"}


def autocast(device: str, bf16: bool):
    """bf16 autocast on CUDA when asked; fp32 otherwise."""
    if bf16 and torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


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
          extra_loss: Callable[[], torch.Tensor] | None = None, items: Encoded | None = None) -> dict[str, float]:
    """Train the model's trainable parameters on df (plus `extra_loss()`, a regulariser, when
    given); `items` are df's rows already tokenised (else they are tokenised here). Returns
    loss, steps and throughput."""
    items = encode(tokenizer, df, s.max_length) if items is None else items
    if len(items) != len(df):
        raise ValueError(f"{len(items)} tokenised rows for {len(df)} examples")
    device = torch.device(s.device)
    model.to(device)
    labels = torch.tensor(df["label"].to_numpy(), dtype=torch.long)
    lengths = items.lengths
    per_epoch = math.ceil(len(items) / s.batch_size)
    total = max(s.epochs * per_epoch, s.min_steps)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    warmup = int(s.warmup * total)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: (step + 1) / max(1, warmup) if step < warmup
        else max(0.0, (total - step) / max(1, total - warmup))
    )
    rng = random.Random(s.seed)
    torch.manual_seed(s.seed)
    model.train()
    tail: deque[torch.Tensor] = deque(maxlen=max(1, per_epoch))  # last epoch's losses, on the device
    step, seen, start = 0, 0, time.perf_counter()
    while step < total:
        for idx in length_batches(lengths, s.batch_size, rng):
            batch = {k: v.to(device, non_blocking=True) for k, v in items.batch(idx, tokenizer.pad_token_id).items()}
            with autocast(s.device, s.bf16):
                logits = model(**batch).logits
            loss = F.cross_entropy(logits.float(), labels[idx].to(device, non_blocking=True))
            if extra_loss is not None:
                loss = loss + extra_loss()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, s.clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            tail.append(loss.detach())
            seen += len(idx)
            step += 1
            if step >= total:
                break
    train_loss = float(torch.stack(list(tail)).mean())  # the one wait on the device
    elapsed = time.perf_counter() - start
    model.eval()
    return {"steps": step, "train_loss": train_loss, "train_examples_per_s": seen / max(elapsed, 1e-9),
            "train_seconds": elapsed}
