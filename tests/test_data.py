from __future__ import annotations

import pandas as pd
import pytest

from mera import data
from mera.tasks import TaskError, read_task


@pytest.fixture(scope="module")
def mnli(shared_data):
    spec = read_task(shared_data, "mnli")
    return spec, data.load_split(shared_data, spec, "train"), data.load_split(shared_data, spec, "validation")


@pytest.mark.parametrize("k", [1, 8, 16])
def test_sampler_takes_exactly_k_per_class(mnli, k):
    spec, train, _ = mnli
    sample = data.sample_k_shot(train, k, seed=13, num_labels=spec.num_labels)
    assert spec.num_labels == 3
    assert sample["label"].value_counts().to_dict() == {c: k for c in range(spec.num_labels)}


def test_sampler_same_seed_same_sample_other_seed_other_sample(mnli):
    spec, train, _ = mnli
    a = data.sample_k_shot(train, 8, seed=21, num_labels=spec.num_labels)
    b = data.sample_k_shot(train, 8, seed=21, num_labels=spec.num_labels)
    c = data.sample_k_shot(train, 8, seed=42, num_labels=spec.num_labels)
    pd.testing.assert_frame_equal(a, b)
    assert set(a["sentence1"] + "|" + a["sentence2"]) != set(c["sentence1"] + "|" + c["sentence2"])


def test_sample_is_disjoint_from_validation(shared_data):
    spec = read_task(shared_data, "rte")
    train = data.load_split(shared_data, spec, "train")
    val = data.load_split(shared_data, spec, "validation")
    pairs = lambda df: set(zip(df["sentence1"], df["sentence2"]))  # noqa: E731
    for seed in (13, 21, 42):
        sample = data.sample_k_shot(train, 16, seed, spec.num_labels)
        assert pairs(sample) <= pairs(train)
        assert not pairs(sample) & pairs(val)


def test_sampler_refuses_k_larger_than_a_class(mnli):
    spec, train, _ = mnli
    with pytest.raises(TaskError, match="fewer than shots"):
        data.sample_k_shot(train.head(20), 50, seed=0, num_labels=spec.num_labels)


def test_import_copies_tasks_and_validates(shared_data, tmp_path):
    names = data.import_from_dir(shared_data, tmp_path / "data", ["rte", "mrpc"])
    assert names == ["rte", "mrpc"]
    assert data.task_hash(tmp_path / "data", "rte") == data.task_hash(shared_data, "rte")
    assert not [p for p in (tmp_path / "data").iterdir() if p.name.startswith(".")]  # no temp dir left
    with pytest.raises(TaskError, match="did you mean 'rte'"):
        data.import_from_dir(shared_data, tmp_path / "data", ["rtee"])


def test_unknown_task_names_the_known_ones(shared_data):
    with pytest.raises(TaskError, match="did you mean 'sst2'"):
        read_task(shared_data, "sst")
