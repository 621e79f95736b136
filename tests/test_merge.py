from __future__ import annotations

import numpy as np
import pytest
import torch

from mera import data
from mera.evaluate import predict
from mera.merge import METHODS, MergeError, merge
from mera.merge.ot import align_to_anchor, plan
from mera.merge.symmetry import modules, permute
from mera.models import adapter_state, build_model, set_adapter_state
from mera.tasks import read_task


def random_adapter(model_cfg, seed: int) -> dict[str, torch.Tensor]:
    """A real adapter's tensors (names, shapes), filled with seeded noise so units differ."""
    model, _ = build_model(model_cfg, 2)
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) * 0.1 for k, v in adapter_state(model).items()}


def random_perms(state, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {prefix: torch.randperm(m["adapter_down.0.weight"].shape[0], generator=g)
            for prefix, m in modules(state).items()}


@pytest.fixture(scope="module")
def adapter(model_cfg):
    return random_adapter(model_cfg, 0)


def test_ot_wts_recovers_a_permuted_copy_exactly(adapter):
    perms = random_perms(adapter, 1)
    permuted = permute(adapter, perms)
    assert any(not torch.equal(permuted[k], adapter[k]) for k in adapter)
    aligned, diag = align_to_anchor([adapter, permuted], anchor=0)
    for k in adapter:
        torch.testing.assert_close(aligned[1][k], adapter[k], rtol=0, atol=1e-6)
    for prefix, perm in perms.items():
        # anchor unit k came from unit plans[k] of the permuted copy: the inverse permutation
        assert diag["modules"][prefix]["plans"][0] == torch.argsort(perm).tolist()
        assert diag["modules"][prefix]["cost_after"][0] == pytest.approx(0.0, abs=1e-6)
        assert diag["modules"][prefix]["cost_before"][0] > 0


def test_ot_avg_of_permuted_copies_is_the_adapter_naive_avg_is_not(adapter):
    permuted = permute(adapter, random_perms(adapter, 2))
    ot_avg, _ = merge("mera-wts", [adapter, permuted])
    naive, _ = merge("mera-avg", [adapter, permuted])
    key = next(k for k in adapter if k.endswith("adapter_down.0.weight"))
    torch.testing.assert_close(ot_avg[key], adapter[key], rtol=0, atol=1e-6)
    assert (naive[key] - adapter[key]).abs().max() > 1e-2


def test_permuting_hidden_units_leaves_logits_unchanged(shared_data, model_cfg, adapter):
    spec = read_task(shared_data, "sst2")
    df = data.load_split(shared_data, spec, "validation").head(8)
    model, tok = build_model(model_cfg, spec.num_labels, seed=0)
    set_adapter_state(model, adapter)
    before = predict(model, tok, df, 32)
    set_adapter_state(model, permute(adapter, random_perms(adapter, 3)))
    np.testing.assert_allclose(predict(model, tok, df, 32), before, atol=1e-5)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_merging_one_adapter_returns_it(name, adapter):
    merged, _ = merge(name, [adapter])
    for k in adapter:
        torch.testing.assert_close(merged[k], adapter[k], rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_merging_identical_adapters(name, adapter):
    merged, _ = merge(name, [adapter] * 3)
    scale = 3.0 if name == "mera-sum" else 1.0
    for k in adapter:
        torch.testing.assert_close(merged[k], scale * adapter[k], rtol=1e-6, atol=1e-6)


def test_emd_plan_is_a_permutation_matching_linear_sum_assignment():
    from scipy.optimize import linear_sum_assignment

    rng = np.random.default_rng(0)
    for _ in range(5):
        cost = rng.random((24, 24))
        t = plan(cost)
        rows, cols = linear_sum_assignment(cost)
        expected = np.zeros_like(cost)
        expected[rows, cols] = 1.0
        np.testing.assert_allclose(t, expected, atol=1e-9)


def test_ot_never_moves_the_up_bias(model_cfg, adapter):
    other = random_adapter(model_cfg, 5)
    merged, _ = merge("mera-wts", [adapter, other])
    for k in adapter:
        if k.endswith("adapter_up.bias"):
            torch.testing.assert_close(merged[k], (adapter[k] + other[k]) / 2)


def test_unknown_method_and_parameter_fail_clearly(adapter):
    with pytest.raises(MergeError, match="did you mean 'mera-wts'"):
        merge("mera-wt", [adapter])
    with pytest.raises(MergeError, match="unknown parameter"):
        merge("mera-avg", [adapter], anchor=0)
