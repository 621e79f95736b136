"""The merging library, proven by identities (METHOD.md 3.7): every registered method, the
three adapter kinds (Pfeiffer, Houlsby, LoRA), weights- and activation-based OT."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch

from mera import data
from mera.calibrate import Activations
from mera.config import ModelConfig
from mera.evaluate import predict
from mera.merge import METHODS, MergeError, validate
from mera.merge.core import merge
from mera.merge.lora import deltas
from mera.merge.ot import plan
from mera.merge.reduce import dare_linear, dare_ties, drop_all, ties
from mera.merge.symmetry import SYMMETRIES, modules, permute
from mera.models import ADAPTER, adapter_state, build_model, read_adapter, set_adapter_state, write_adapter
from mera.tasks import read_task

KINDS = {"bottleneck": "bottleneck", "houlsby": "bottleneck", "lora": "lora"}  # config name -> symmetry kind
# parameters under which a reducer is an identity on identical inputs: no trimming, no dropping
IDENTITY_PARAMS = {"ties": {"density": 1.0}, "dare-linear": {"p": 0.0}, "dare-ties": {"p": 0.0}}


class Kit:
    """A real model of one adapter kind, seeded random adapters for it, and calibration."""

    def __init__(self, kind: str, texts: pd.DataFrame):
        self.kind, self.sym_kind = kind, KINDS[kind]
        self.cfg = ModelConfig(adapter=kind, max_length=32)
        self.model, self.tok = build_model(self.cfg, 2, seed=0)
        self.texts = texts
        self.acts = Activations(self.model, self.tok, texts, max_length=32)

    def random(self, seed: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        return {k: torch.randn(v.shape, generator=g) * 0.1 for k, v in adapter_state(self.model).items()}

    def perms(self, state, seed: int, signs: bool = False):
        g = torch.Generator().manual_seed(seed)
        sym = SYMMETRIES[self.sym_kind]
        perms = {p: torch.randperm(m[sym.first].shape[sym.unit_axes[sym.first]], generator=g)
                 for p, m in modules(state, self.sym_kind).items()}
        flips = {p: torch.where(torch.rand(len(v), generator=g) < 0.5, -1.0, 1.0) for p, v in perms.items()}
        return perms, (flips if signs else None)

    def logits(self, state) -> np.ndarray:
        set_adapter_state(self.model, state)
        return predict(self.model, self.tok, self.texts, 32)


@pytest.fixture(scope="module")
def texts(shared_data) -> pd.DataFrame:
    spec = read_task(shared_data, "sst2")
    return data.load_split(shared_data, spec, "validation").head(8)


@pytest.fixture(scope="module")
def kits(texts) -> dict[str, Kit]:
    return {kind: Kit(kind, texts) for kind in KINDS}


def _merge(kit: Kit, name: str, states, **params):
    return merge(name, states, activations=kit.acts, **params)


def _assert_state_close(a, b, atol=1e-6):
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol)


# ---- every registered method ---------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(METHODS))
def test_merging_one_adapter_returns_it(name, kits):
    kit = kits["bottleneck"]
    a = kit.random(0)
    merged, diag = _merge(kit, name, [a])
    _assert_state_close(merged, a, atol=0)
    assert diag["single_source"]


@pytest.mark.parametrize("name", sorted(METHODS))
def test_merging_identical_adapters_returns_it_and_sum_scales(name, kits, tmp_path):
    kit = kits["bottleneck"]
    a = kit.random(1)
    merged, _ = _merge(kit, name, [a] * 3, **IDENTITY_PARAMS.get(METHODS[name].reduction, {}))
    scale = 3.0 if METHODS[name].reduction == "sum" else 1.0
    _assert_state_close(merged, {k: scale * v for k, v in a.items()}, atol=1e-5)
    # the result is an adapter the library's own load_adapter reads, and the model runs with it
    meta, _ = read_adapter_dir_of(kit, tmp_path)
    write_adapter(tmp_path / "merged", meta, merged)
    kit.model.load_adapter(str(tmp_path / "merged"), load_as="loaded", set_active=True)
    try:
        logits = predict(kit.model, kit.tok, kit.texts.head(2), 32)
        assert np.isfinite(logits).all() and logits.shape == (2, 2)
        loaded = {k.replace(".loaded.", f".{ADAPTER}."): v
                  for k, v in kit.model.state_dict().items() if ".loaded." in k}
        _assert_state_close(loaded, merged, atol=0)
    finally:
        kit.model.delete_adapter("loaded")
        kit.model.set_active_adapters(ADAPTER)


def read_adapter_dir_of(kit: Kit, tmp_path):
    """Save the kit's adapter once (the library's own writer) and read its config back."""
    d = tmp_path / "saved"
    if not d.exists():
        kit.model.save_adapter(str(d), ADAPTER, with_head=False)
    return read_adapter(d)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_merges_distinct_adapters_into_a_finite_adapter_of_the_same_shape(name, kits):
    kit = kits["bottleneck"]
    states = [kit.random(s) for s in (2, 3, 4)]
    merged, diag = _merge(kit, name, states)
    assert {k: v.shape for k, v in merged.items()} == {k: v.shape for k, v in states[0].items()}
    assert all(torch.isfinite(v).all() for v in merged.values())
    assert diag["n"] == 3 and ("alignment" in diag) == (METHODS[name].align != "none")


# ---- OT alignment: Pfeiffer and Houlsby ------------------------------------------------------

@pytest.mark.parametrize("kind", ["bottleneck", "houlsby"])
@pytest.mark.parametrize("name", ["mera-wts", "mera-acts"])
def test_ot_recovers_a_permuted_copy_exactly_and_the_plan_is_the_permutation(kind, name, kits):
    kit = kits[kind]
    a = kit.random(5)
    perms, _ = kit.perms(a, 6)
    permuted = permute(a, perms)
    assert any(not torch.equal(permuted[k], a[k]) for k in a)
    merged, diag = _merge(kit, name, [a, permuted], anchor=0)
    _assert_state_close(merged, a)  # avg of A and (A, re-aligned) is A
    mods = diag["alignment"]["modules"]
    assert len(mods) == (12 if kind == "houlsby" else 6)  # Houlsby: two modules per layer, each aligned
    for prefix, perm in perms.items():
        # anchor unit k came from unit plans[k] of the permuted copy: the inverse permutation
        assert mods[prefix]["plans"][0] == torch.argsort(perm).tolist()
        # weights: exactly 0; activations: float32 forward passes of permuted matmuls differ in the last bits
        assert mods[prefix]["cost_after"][0] <= 1e-5 * mods[prefix]["cost_before"][0]
        assert mods[prefix]["cost_before"][0] > 0


@pytest.mark.parametrize("kind", ["bottleneck", "houlsby"])
@pytest.mark.parametrize("name", ["mera-wts", "mera-acts"])
def test_ot_avg_of_a_and_permuted_a_gives_a_logits_naive_avg_does_not(kind, name, kits):
    kit = kits[kind]
    a = kit.random(7)
    permuted = permute(a, kit.perms(a, 8)[0])
    reference = kit.logits(a)
    ot_avg, _ = _merge(kit, name, [a, permuted], anchor=0)
    naive, _ = merge("mera-avg", [a, permuted])
    np.testing.assert_allclose(kit.logits(ot_avg), reference, atol=1e-5)
    assert np.abs(kit.logits(naive) - reference).max() > 1e-3


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_permuting_hidden_units_leaves_logits_unchanged(kind, kits):
    kit = kits[kind]
    a = kit.random(9)
    perms, signs = kit.perms(a, 10, signs=SYMMETRIES[kit.sym_kind].sign_flip)
    np.testing.assert_allclose(kit.logits(permute(a, perms, kit.sym_kind, signs)), kit.logits(a), atol=1e-5)


def test_ot_never_moves_the_up_bias(kits):
    kit = kits["bottleneck"]
    a, b = kit.random(11), kit.random(12)
    for name in ("mera-wts", "mera-acts"):
        merged, _ = _merge(kit, name, [a, b])
        for k in a:
            if k.endswith("adapter_up.bias"):
                torch.testing.assert_close(merged[k], (a[k] + b[k]) / 2)


def test_anchor_rules_medoid_names_and_iterations(kits):
    kit = kits["bottleneck"]
    a = kit.random(13)
    states = [kit.random(14), a, permute(a, kit.perms(a, 15)[0])]
    names, sizes = ["x", "y", "z"], [10, 30, 20]
    assert merge("mera-wts", states, names=names, sizes=sizes)[1]["alignment"]["anchor_name"] == "y"  # largest
    assert merge("mera-wts", states, names=names, anchor="z")[1]["alignment"]["anchor"] == 2
    _, diag = merge("mera-wts", states, anchor="medoid")
    costs = diag["alignment"]["medoid_costs"]
    assert diag["alignment"]["anchor"] in (1, 2) and costs[0] > max(costs[1], costs[2])  # the odd one out is not it
    _, diag = merge("mera-wts", states, anchor=1, iterations=3)
    assert {"iteration_2", "iteration_3"} <= set(diag["alignment"])
    with pytest.raises(MergeError, match="anchor 'w' is not one of"):
        merge("mera-wts", states, names=names, anchor="w")


# ---- the plan itself --------------------------------------------------------------------------

def test_emd_plan_is_a_permutation_matching_linear_sum_assignment():
    from scipy.optimize import linear_sum_assignment

    rng = np.random.default_rng(0)
    for _ in range(5):
        cost = rng.random((24, 24))
        rows, cols = linear_sum_assignment(cost)
        expected = np.zeros_like(cost)
        expected[rows, cols] = 1.0
        np.testing.assert_allclose(plan(cost), expected, atol=1e-9)


def test_sinkhorn_approaches_the_emd_plan_as_reg_shrinks():
    rng = np.random.default_rng(1)
    cost = rng.random((12, 12))
    exact = plan(cost)
    gaps = [np.abs(plan(cost, "sinkhorn", reg) - exact).sum() for reg in (0.5, 0.05, 0.01)]
    assert gaps[0] > gaps[1] > gaps[2]
    assert (plan(cost, "sinkhorn", 0.01).argmax(0) == exact.argmax(0)).all()
    np.testing.assert_allclose(plan(cost, "sinkhorn", 0.05).sum(0), 1.0)  # the column correction


# ---- reducers against hand computations --------------------------------------------------------

TAUS = [torch.tensor([1.0, -2.0, 0.5, 3.0, -0.1]),
        torch.tensor([-1.5, 1.0, 0.2, -0.5, 2.0]),
        torch.tensor([0.4, -0.3, -0.6, 1.0, 0.1])]


def test_ties_trims_elects_and_takes_the_disjoint_mean():
    states = [{"w": t} for t in TAUS]
    # density 0.6 keeps 3 of 5: [1,-2,0,3,0], [-1.5,1,0,0,2], [0.4,0,-0.6,1,0]; sum [-0.1,-1,-0.6,4,2]
    torch.testing.assert_close(ties(states, density=0.6)["w"], torch.tensor([-1.5, -2.0, -0.6, 2.0, 2.0]))
    # frequency: signs (+,-,+) -> +: mean(1, 0.4); (-,+,0) tie -> 0
    torch.testing.assert_close(ties(states, density=0.6, sign="frequency")["w"],
                               torch.tensor([0.7, 0.0, -0.6, 2.0, 2.0]))
    torch.testing.assert_close(ties(states, density=0.6, lam=0.5)["w"], torch.tensor([-0.75, -1.0, -0.3, 1.0, 1.0]))


def test_ties_global_trim_scope_trims_over_the_whole_adapter():
    state = {"a": torch.tensor([5.0, 3.0]), "b": torch.tensor([0.2, 0.1])}
    # global: the top half of [5, 3, .2, .1] lies in "a"; per tensor each keeps its larger half
    assert torch.equal(ties([state], density=0.5, trim_scope="global")["a"], torch.tensor([5.0, 3.0]))
    assert torch.equal(ties([state], density=0.5, trim_scope="global")["b"], torch.zeros(2))
    assert torch.equal(ties([state], density=0.5, trim_scope="tensor")["b"], torch.tensor([0.2, 0.0]))


def test_dare_drops_rescales_and_keeps_the_expectation():
    tau = torch.linspace(-1, 1, 200)
    out = dare_linear([{"w": tau}], p=0.3, lam=1.0, seed=4)["w"]
    kept = out != 0
    torch.testing.assert_close(out[kept], tau[kept] / 0.7)  # survivors rescaled by 1/(1-p)
    assert 0.2 < 1 - kept.float().mean() < 0.4  # about p dropped
    assert torch.equal(out, dare_linear([{"w": tau}], p=0.3, lam=1.0, seed=4)["w"])  # the seed fixes the mask
    assert not torch.equal(out, dare_linear([{"w": tau}], p=0.3, lam=1.0, seed=5)["w"])
    mean = torch.stack([dare_linear([{"w": tau}], p=0.3, lam=1.0, seed=s)["w"] for s in range(400)]).mean(0)
    assert (mean - tau).abs().max() < 0.15 and (mean - tau).abs().mean() < 0.04  # E[DARE(τ)] = τ


def test_dare_ties_is_ties_on_dropped_vectors():
    states = [{"w": t} for t in TAUS]
    torch.testing.assert_close(dare_ties(states, p=0.0)["w"], ties(states, density=1.0)["w"])
    dropped = [s["w"] for s in drop_all(states, p=0.5, seed=1)]
    taus = torch.stack(dropped)  # by hand: elect the sign of the sum, mean of the agreeing survivors
    agree = (torch.sign(taus) == torch.sign(taus.sum(0))) & (taus != 0)
    expected = (taus * agree).sum(0) / agree.sum(0).clamp(min=1)
    torch.testing.assert_close(dare_ties(states, p=0.5, seed=1)["w"], expected)
    assert all(((d == 0) | torch.isclose(d, t / 0.5)).all() for d, t in zip(dropped, TAUS))


# ---- LoRA ----------------------------------------------------------------------------------------

def test_lora_merges_act_on_delta_w(kits):
    kit = kits["lora"]
    a = kit.random(20)
    gauge, _ = kit.perms(a, 21)
    flips = {p: torch.where(torch.arange(len(v)) % 2 == 0, -1.0, 1.0) for p, v in gauge.items()}
    same_update = permute(a, gauge, "lora", flips)  # other factors, the same ΔW = B A
    merged, diag = merge("mera-avg", [a, same_update])
    assert diag["lora"]["space"] == "delta"
    for prefix, d in deltas(merged).items():
        torch.testing.assert_close(d, deltas(a)[prefix], rtol=0, atol=1e-6)
    naive = {k: (a[k] + same_update[k]) / 2 for k in a}  # averaging factors is not averaging updates
    assert max((deltas(naive)[p] - deltas(a)[p]).abs().max() for p in deltas(a)) > 1e-2
    # two updates living in disjoint rank components: their sum is exact at the same rank
    lo = {k: v.clone() for k, v in a.items()}
    hi = kit.random(22)
    for k in a:
        axis = SYMMETRIES["lora"].unit_axes["lora_A" if k.endswith("lora_A") else "lora_B"]
        lo[k].narrow(axis, 4, 4).zero_()
        hi[k].narrow(axis, 0, 4).zero_()
    summed, _ = merge("mera-sum", [lo, hi])
    for prefix, d in deltas(summed).items():
        torch.testing.assert_close(d, deltas(lo)[prefix] + deltas(hi)[prefix], rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["mera-wts", "mera-acts"])
def test_lora_ot_recovers_a_permuted_and_sign_flipped_copy(name, kits):
    kit = kits["lora"]
    a = kit.random(23)
    perms, signs = kit.perms(a, 24, signs=True)
    copy = permute(a, perms, "lora", signs)
    merged, diag = _merge(kit, name, [a, copy], anchor=0)
    _assert_state_close(merged, a)  # factors, not only ΔW: the copy was brought back onto A
    for prefix, perm in perms.items():
        entry = diag["alignment"]["modules"][prefix]
        assert entry["plans"][0] == torch.argsort(perm).tolist()
        assert entry["flipped"][0] == int((signs[prefix] < 0).sum())
    np.testing.assert_allclose(kit.logits(merged), kit.logits(a), atol=1e-5)


@pytest.mark.parametrize("name", sorted(n for n, m in METHODS.items() if m.align == "none"))
def test_lora_identical_adapters_keep_their_update(name, kits):
    kit = kits["lora"]
    a = kit.random(25)
    merged, _ = merge(name, [a, a], **IDENTITY_PARAMS.get(METHODS[name].reduction, {}))
    scale = 2.0 if METHODS[name].reduction == "sum" else 1.0
    for prefix, d in deltas(merged).items():
        torch.testing.assert_close(d, scale * deltas(a)[prefix], rtol=1e-5, atol=1e-6)


# ---- errors -------------------------------------------------------------------------------------

def test_bad_methods_parameters_and_inputs_fail_clearly(kits):
    a = kits["bottleneck"].random(30)
    with pytest.raises(MergeError, match="did you mean 'mera-wts'"):
        merge("mera-wt", [a])
    with pytest.raises(MergeError, match="unknown parameter.*anchor.*accepted: over"):
        merge("mera-avg", [a], anchor=0)
    with pytest.raises(MergeError, match="pass `activations`"):
        merge("mera-acts", [a, a])
    with pytest.raises(MergeError, match="solver 'lp' is not one of: emd, sinkhorn"):
        validate("mera-wts", {"solver": "lp"})
    with pytest.raises(MergeError, match="density must be in"):
        validate("ties", {"density": 1.5})
    with pytest.raises(MergeError, match="point 'mid' is not one of: pre, post"):
        validate("mera-acts", {"point": "mid"})
    with pytest.raises(MergeError, match="other tensors"):
        merge("mera-avg", [a, kits["lora"].random(0)])
    smaller = {k: v[..., :4] if k.endswith("up.weight") else v for k, v in a.items()}
    with pytest.raises(MergeError, match="shape"):
        merge("mera-avg", [a, smaller])
    with pytest.raises(MergeError, match="only averaged"):
        merge("ot-ties", [kits["lora"].random(0), kits["lora"].random(1)])


# ---- the registry's declared parameters --------------------------------------------------------

# values of the right type each parameter is tried with, accepted and rejected ones
TRIALS = {
    "over": ["all", "touching", "most"], "lam": [None, 0.5, 2], "weights": [[1.0, -0.5], [1, 2]],
    "density": [0, 0.3, 1, 1.5, -0.1], "sign": ["total", "frequency", "majority"],
    "trim_scope": ["tensor", "global", "layer"], "p": [0, 0.5, 0.99, 1, 1.2], "seed": [0, 7],
    "anchor": ["largest", "medoid", "first", 0, 1, 2, -1, "a", "b", "zz"],
    "features": ["in", "in+out", "out"], "metric": ["euclidean", "cosine", "l1"], "squared": [True, False],
    "solver": ["emd", "sinkhorn", "lp"], "reg": [0.05, 1, 0, -1], "iterations": [1, 3, 0],
    "point": ["pre", "post", "mid"], "calib": ["sources", "target", "both"],
    "calib_examples": [1, 64, 0, -3], "max_tokens": [8, 0],
}
# wrong types, which the merge functions may coerce (float(True)) but a config must not pass
WRONG_TYPES = {"over": [1], "lam": ["big", True], "weights": ["1,2", [1, "x"]], "density": ["half", True],
               "p": ["x"], "seed": [1.5, "s", True], "anchor": [1.5, True], "squared": ["yes", 1],
               "reg": ["x"], "iterations": [2.5, "two"], "calib_examples": [2.5, "8"], "max_tokens": ["many"]}


def test_every_reduction_declares_the_parameters_its_function_takes():
    import inspect

    from mera.merge.methods import REDUCERS, REDUCTIONS

    for name, reduction in REDUCTIONS.items():
        assert reduction.params == tuple(list(inspect.signature(REDUCERS[name]).parameters)[1:]), name


@pytest.mark.parametrize("method", ["mera-avg", "ta", "ties", "dare-linear", "dare-ties", "ot-ties", "mera-acts"])
def test_declared_checks_accept_exactly_what_the_merge_accepts(method, kits):
    """validate() reads declared rules and runs nothing; for every trial value it must agree
    with the real merge of two adapters (calibration knobs, read by mera.calibrate, excepted)."""
    from mera.merge.methods import CALIB_PARAMS

    kit = kits["bottleneck"]
    states = [kit.random(60), kit.random(61)]
    for key in METHODS[method].params:
        for value in TRIALS[key]:
            try:
                validate(method, {key: value}, names=["a", "b"])
                declared = None
            except MergeError as exc:
                declared = str(exc)
            if key in CALIB_PARAMS:
                continue
            extra = {"solver": "sinkhorn"} if key == "reg" else {}  # reg is read by sinkhorn alone
            try:
                merged, _ = merge(method, [dict(s) for s in states], activations=kit.acts, names=["a", "b"],
                                  sizes=[2, 1], **{key: value}, **extra)
                ran = None if all(torch.isfinite(v).all() for v in merged.values()) else "not finite"
            except (MergeError, ValueError, TypeError) as exc:
                ran = str(exc)
            assert (declared is None) == (ran is None), (method, key, value, declared, ran)
            if declared:
                assert f"{key} " in declared and repr(value) in declared, declared
        for value in WRONG_TYPES.get(key, []):
            with pytest.raises(MergeError, match=f"{key} .*{re.escape(repr(value))}"):
                validate(method, {key: value}, names=["a", "b"])
    with pytest.raises(MergeError, match="unknown parameter"):
        validate(method, {"bogus": 1})


def test_calibration_knobs_are_checked_as_declared():
    for key, good, bad in [("point", "post", "mid"), ("calib", "target", "both"), ("calib_examples", 8, 0),
                           ("max_tokens", 64, "many")]:
        validate("mera-acts", {key: good})
        with pytest.raises(MergeError, match=f"{key} .*{bad!r}"):
            validate("mera-acts", {key: bad})


# ---- the command line ---------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["mera-wts", "mera-acts", "ties"])
def test_mera_merge_cli_writes_an_adapter_the_library_loads(method, kits, shared_data, tmp_path, capsys):
    """`mera merge` as the console script runs it (its main, in this process: the model is loaded once)."""
    from flows.cli import main

    kit = kits["houlsby"]
    a = kit.random(40)
    dirs = []
    for i, state in enumerate([a, permute(a, kit.perms(a, 41)[0]), kit.random(42)]):
        set_adapter_state(kit.model, state)
        kit.model.save_adapter(str(tmp_path / f"src{i}"), ADAPTER, with_head=False)
        dirs += ["--adapter", str(tmp_path / f"src{i}")]
    out = tmp_path / "merged"
    params = {"mera-wts": ["anchor=0"], "mera-acts": ["anchor=0", "calib_examples=8"], "ties": ["density=0.5"]}[method]
    cmd = ["merge", *dirs, "--method", method, "--out", str(out), "--data-dir", str(shared_data), "--calib", "sst2",
           *[x for p in params for x in ("--param", p)]]
    assert main(cmd) == 0
    assert f"merged 3 adapter(s) with {method}" in capsys.readouterr().out
    expected, _ = _merge(kit, method, [a, permute(a, kit.perms(a, 41)[0]), kit.random(42)],
                         **({"density": 0.5} if method == "ties" else {"anchor": 0}))
    kit.model.load_adapter(str(out), load_as="cli", set_active=True)
    try:
        loaded = {k.replace(".cli.", f".{ADAPTER}."): v for k, v in kit.model.state_dict().items() if ".cli." in k}
        if method != "mera-acts":  # acts: the CLI calibrates on sst2 training inputs, the kit on validation ones
            _assert_state_close(loaded, expected, atol=1e-6)
        assert set(loaded) == set(a)
        assert np.isfinite(predict(kit.model, kit.tok, kit.texts.head(2), 32)).all()
    finally:
        kit.model.delete_adapter("cli")
        kit.model.set_active_adapters(ADAPTER)
    assert (out / "diagnostics.json").is_file()
    assert main(cmd) == 2
    err = capsys.readouterr().err
    assert err.startswith("mera: error:") and "exists and is not empty" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("args", [["merge", "--list"], ["merge", "--help"]])
def test_the_cli_lists_every_registered_merge_method(args, capsys):
    from flows.cli import main
    from mera.merge import METHODS

    try:
        code = main(args)
    except SystemExit as exc:  # argparse ends --help this way
        code = exc.code
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    assert code == 0 and set(METHODS) <= listed
