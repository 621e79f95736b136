"""Tokenised rows and their per-task cache (mera.tokens)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from mera import data, tokens
from mera.config import ConfigError
from mera.models import load_tokenizer
from mera.tasks import read_task
from mera.train import Runtime, length_batches


def _rows(enc):
    return [r.tolist() for r in enc.ids]


def test_encode_matches_the_tokenizer_and_pads_batches(shared_data):
    spec = read_task(shared_data, "rte")
    df = data.load_split(shared_data, spec, "validation").head(10)
    tok = load_tokenizer("all-MiniLM-L6-v2")
    enc = tokens.encode(tok, df, 32)
    ref = tok(df["sentence1"].tolist(), df["sentence2"].tolist(), truncation="longest_first", max_length=32)
    assert _rows(enc) == ref["input_ids"] and [r.tolist() for r in enc.types] == ref["token_type_ids"]
    batch = enc.batch([0, 3, 5], tok.pad_token_id)
    width = max(len(ref["input_ids"][i]) for i in (0, 3, 5))
    assert batch["input_ids"].shape == (3, width)
    for j, i in enumerate((0, 3, 5)):
        n = len(ref["input_ids"][i])
        assert batch["input_ids"][j, :n].tolist() == ref["input_ids"][i]
        assert batch["attention_mask"][j].tolist() == [1] * n + [0] * (width - n)
        assert (batch["input_ids"][j, n:] == tok.pad_token_id).all()


def test_cache_is_keyed_by_tokenizer_length_and_data_and_survives_a_bad_file(shared_data, tmp_path):
    spec = read_task(shared_data, "mrpc")
    df = data.load_split(shared_data, spec, "validation")
    tok = load_tokenizer("all-MiniLM-L6-v2")
    calls = []

    def load():
        calls.append(1)
        return df

    first = tokens.cached(tok, load, 48, tmp_path, "mrpc.validation", "hash-a")
    assert _rows(first) == _rows(tokens.encode(tok, df, 48)) and len(calls) == 1
    files = list(tmp_path.glob("mrpc.validation-*.npz"))
    assert len(files) == 1
    tokens._MEMORY.clear()  # another process: read back from disk, not tokenised again
    again = tokens.cached(tok, load, 48, tmp_path, "mrpc.validation", "hash-a")
    assert len(calls) == 1 and _rows(again) == _rows(first) and [r.tolist() for r in again.types] == \
        [r.tolist() for r in first.types]
    tokens.cached(tok, load, 32, tmp_path, "mrpc.validation", "hash-a")  # another max_length
    tokens.cached(tok, load, 48, tmp_path, "mrpc.validation", "hash-b")  # other data
    assert len(calls) == 3 and len(list(tmp_path.glob("*.npz"))) == 3
    tokens._MEMORY.clear()
    files[0].write_bytes(b"cut")  # a truncated file is rebuilt, not trusted
    rebuilt = tokens.cached(tok, load, 48, tmp_path, "mrpc.validation", "hash-a")
    assert len(calls) == 4 and _rows(rebuilt) == _rows(first)


def test_subset_keeps_the_split_rows_a_capped_sample_names(shared_data):
    spec = read_task(shared_data, "rte")
    split = data.load_split(shared_data, spec, "validation")
    tok = load_tokenizer("all-MiniLM-L6-v2")
    sample = data.cap(split, 20, seed=0)
    whole = tokens.encode(tok, split, 32)
    assert _rows(whole.subset(sample.index)) == _rows(tokens.encode(tok, sample, 32))


def test_length_batches_cover_every_row_once_and_group_similar_lengths():
    lengths = [int(x) for x in np.random.default_rng(0).integers(3, 60, size=101)]
    for rng in (None, random.Random(1)):
        batches = length_batches(lengths, 8, rng)
        assert sorted(i for b in batches for i in b) == list(range(101))
    spread = np.mean([max(lengths[i] for i in b) - min(lengths[i] for i in b)
                      for b in length_batches(lengths, 8, None)])
    assert spread < 10  # sorted buckets: padding stays small (random batches: ~45)


def test_runtime_resolves_the_device_and_refuses_what_this_machine_cannot_do():
    cpu = Runtime.of("cpu", "auto")
    assert (cpu.device, cpu.bf16, cpu.eval_batch_size) == ("cpu", False, 64)
    with pytest.raises(ConfigError, match="accepted on the CPU: auto, fp32"):
        Runtime.of("cpu", "bf16")
    auto = Runtime.of("auto", "auto")
    assert auto.device == ("cuda" if torch.cuda.is_available() else "cpu") and auto.bf16 == (auto.device == "cuda")
