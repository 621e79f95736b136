"""Tokenised rows, held as numpy arrays, and a per-task cache of them.

A sweep fine-tunes thousands of times on the same few targets and evaluates each model on
the target's whole validation split: that split is tokenised once per (tokenizer,
max_length, task content) and kept on disk under `<artifacts>/tokens/` and in memory for
the process (`cached`); a capped evaluation sample is a row subset of it. Rows are unpadded;
batches are padded to their longest member (`Encoded.batch`).
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

TOKENS_VERSION = 1  # bump when what is stored changes


@dataclass(frozen=True)
class Encoded:
    """Rows of token ids (and segment ids, for models that take them), unpadded."""

    ids: tuple[np.ndarray, ...]
    types: tuple[np.ndarray, ...] | None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> list[int]:
        return [len(r) for r in self.ids]

    def subset(self, rows) -> Encoded:
        rows = [int(r) for r in rows]
        return Encoded(tuple(self.ids[r] for r in rows),
                       None if self.types is None else tuple(self.types[r] for r in rows))

    def batch(self, idx, pad_id: int) -> dict[str, torch.Tensor]:
        """Rows `idx` padded to the longest of them: input_ids, attention_mask (, token_type_ids)."""
        width = max(len(self.ids[i]) for i in idx)
        ids = np.full((len(idx), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(idx), width), dtype=np.int64)
        types = None if self.types is None else np.zeros((len(idx), width), dtype=np.int64)
        for j, i in enumerate(idx):
            n = len(self.ids[i])
            ids[j, :n] = self.ids[i]
            mask[j, :n] = 1
            if types is not None:
                types[j, :n] = self.types[i]
        out = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
        if types is not None:
            out["token_type_ids"] = torch.from_numpy(types)
        return out


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def encode(tokenizer, df: pd.DataFrame, max_length: int) -> Encoded:
    """Tokenise sentence1 (and sentence2 where the task has pairs), truncated to max_length."""
    first = df["sentence1"].astype(str).tolist()
    second = df["sentence2"].tolist() if "sentence2" in df.columns else [None] * len(first)
    if all(_missing(s) for s in second):
        enc = tokenizer(first, truncation=True, max_length=max_length)
    else:
        enc = tokenizer(first, ["" if _missing(s) else str(s) for s in second], truncation="longest_first",
                        max_length=max_length)
    ids = tuple(np.asarray(r, dtype=np.int32) for r in enc["input_ids"])
    types = tuple(np.asarray(r, dtype=np.int8) for r in enc["token_type_ids"]) if "token_type_ids" in enc else None
    return Encoded(ids, types)


_MEMORY: dict[str, Encoded] = {}
_MEMORY_MAX = 8
_LOCK = threading.Lock()


_FINGERPRINTS: dict[int, tuple[object, str]] = {}  # id -> (the tokenizer, kept alive so ids stay unique; digest)


def tokenizer_fingerprint(tokenizer) -> str:
    """What decides the ids: the fast tokenizer's full definition (vocab, normaliser, ...),
    without its truncation / padding state, which each call sets (max_length is keyed apart).
    Computed once per tokenizer object (its JSON is ~0.7 MB; every fine-tune asks)."""
    with _LOCK:
        known = _FINGERPRINTS.get(id(tokenizer))
    if known is not None and known[0] is tokenizer:
        return known[1]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)
        spec.pop("padding", None)
        blob = json.dumps(spec, sort_keys=True)
    else:
        blob = f"{type(tokenizer).__name__}:{tokenizer.name_or_path}:{len(tokenizer)}"
    digest = hashlib.sha256(blob.encode()).hexdigest()[:16]
    with _LOCK:
        _FINGERPRINTS[id(tokenizer)] = (tokenizer, digest)
    return digest


def cached(tokenizer, load: Callable[[], pd.DataFrame], max_length: int, cache_dir: Path, name: str,
           data_hash: str) -> Encoded:
    """`encode(tokenizer, load(), max_length)` for a whole split, read back from memory or
    `cache_dir` when the same tokenizer, max_length and split content were seen before
    (`load` is only called then). `name` is readable (task.split); `data_hash` identifies
    the task's files."""
    key = hashlib.sha256(f"{tokenizer_fingerprint(tokenizer)}|{max_length}|{data_hash}|{name}|{TOKENS_VERSION}"
                         .encode()).hexdigest()[:16]
    with _LOCK:
        if key in _MEMORY:
            return _MEMORY[key]
    path = Path(cache_dir) / f"{name}-{key}.npz"
    enc = _read(path)
    if enc is None:
        enc = encode(tokenizer, load(), max_length)
        _write(path, enc)
    with _LOCK:
        if len(_MEMORY) >= _MEMORY_MAX:
            _MEMORY.pop(next(iter(_MEMORY)))
        _MEMORY[key] = enc
    return enc


def _write(path: Path, enc: Encoded) -> None:
    """Flat arrays + offsets, written to a temp name and renamed (readers never see half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    offsets = np.cumsum([0] + enc.lengths).astype(np.int64)
    arrays = {"ids": np.concatenate(enc.ids) if len(enc) else np.zeros(0, np.int32), "offsets": offsets}
    if enc.types is not None:
        arrays["types"] = np.concatenate(enc.types)
    tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    tmp.replace(path)


def _read(path: Path) -> Encoded | None:
    """The cached rows, or None when absent or unreadable (then it is simply rebuilt)."""
    try:
        with np.load(path) as z:
            ids, offsets = z["ids"], z["offsets"]
            types = z["types"] if "types" in z.files else None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    rows = len(offsets) - 1
    if rows < 0 or offsets[-1] != len(ids) or (types is not None and len(types) != len(ids)):
        return None
    cut = lambda a: tuple(a[offsets[i]:offsets[i + 1]] for i in range(rows))  # noqa: E731
    return Encoded(cut(ids), None if types is None else cut(types))
