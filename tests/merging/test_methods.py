"""Each merge formula against mergekit 0.1.5's ``merge_state_dicts`` on fresh random tensors (2-D and 1-D)."""

import pytest
import torch

from megatron_align.merging.methods import METHODS, MergeParams, random_drop_rescale

mergekit_api = pytest.importorskip("mergekit.merge_methods", reason="mergekit 0.1.5 (test-only dependency)")

# float32 rounding of a few fused multiply-adds on O(1) values
TOL = dict(rtol=2e-6, atol=2e-6)


def _state_dicts(n, seed, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    out = {}
    base = {"w": torch.randn(24, 17, generator=g), "norm": 1 + 0.1 * torch.randn(17, generator=g)}
    out["base"] = base
    for i in range(n):
        out[f"m{i}"] = {k: v + (0.3 + 0.2 * i) * torch.randn(v.shape, generator=g) + shift for k, v in base.items()}
    return out


def _ours(method, sds, params, names, base=True):
    m = METHODS[method]
    out = {}
    for key in sds["base"]:
        out[key] = m.fn([sds[n][key] for n in names], sds["base"][key] if base else None, params, None)
    return out


def _compare(mine, theirs):
    for key in theirs:
        torch.testing.assert_close(mine[key], theirs[key], **TOL, msg=lambda s: f"{key}: {s}")


@pytest.mark.parametrize("weights,normalize", [((1.0, 1.0, 1.0), True), ((0.2, 0.5, 1.3), True),
                                               ((0.2, 0.5, 1.3), False)])
def test_linear(weights, normalize):
    sds = _state_dicts(3, seed=torch.randint(0, 10**6, ()).item())
    names = ["m0", "m1", "m2"]
    theirs = mergekit_api.merge_state_dicts({n: sds[n] for n in names}, "linear",
                                            parameters={"weight": dict(zip(names, weights)), "normalize": normalize})
    mine = _ours("linear", sds, MergeParams(weights=weights, normalize=normalize), names, base=False)
    _compare(mine, theirs)


@pytest.mark.parametrize("lam,normalize", [(1.0, False), (0.6, False), (1.4, True)])
def test_task_arithmetic(lam, normalize):
    sds = _state_dicts(2, seed=torch.randint(0, 10**6, ()).item())
    names, weights = ["m0", "m1"], (0.7, 0.45)
    theirs = mergekit_api.merge_state_dicts(sds, "task_arithmetic", base="base", parameters={
        "weight": {"base": 0.0, **dict(zip(names, weights))}, "lambda": lam, "normalize": normalize})
    mine = _ours("task_arithmetic", sds, MergeParams(weights=weights, lam=lam, normalize=normalize), names)
    _compare(mine, theirs)
    # the formula itself, in float64
    d = {k: sds["base"][k].double() + lam * sum(w * (sds[n][k].double() - sds["base"][k].double())
                                               for n, w in zip(names, weights)) / (sum(weights) if normalize else 1)
         for k in sds["base"]}
    for k in d:
        torch.testing.assert_close(mine[k].double(), d[k], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("n,filter_wise", [(2, False), (3, False), (3, True)])
def test_model_stock(n, filter_wise):
    sds = _state_dicts(n, seed=torch.randint(0, 10**6, ()).item(), shift=0.05)
    names = [f"m{i}" for i in range(n)]
    theirs = mergekit_api.merge_state_dicts(sds, "model_stock", base="base", parameters={"filter_wise": filter_wise})
    mine = _ours("model_stock", sds, MergeParams(weights=[1.0] * n, filter_wise=filter_wise), names)
    _compare(mine, theirs)
    if not filter_wise:  # t from the mean pairwise cosine, in float64
        b = sds["base"]["w"].double().reshape(-1)
        ds = [sds[m]["w"].double().reshape(-1) - b for m in names]
        cos = torch.stack([torch.dot(ds[i], ds[j]) / (ds[i].norm() * ds[j].norm())
                           for i in range(n) for j in range(i + 1, n)]).mean()
        t = n * cos / (1 + (n - 1) * cos)
        ref = t * sum(sds[m]["w"].double() for m in names) / n + (1 - t) * sds["base"]["w"].double()
        torch.testing.assert_close(mine["w"].double(), ref, rtol=1e-6, atol=1e-6)


def test_model_stock_singular_keeps_base():
    """Opposite task vectors: 1 + (k−1)·cos = 0, so t = 0 and the base is kept (mergekit's rule)."""
    base = torch.randn(6, 5)
    d = torch.randn(6, 5)
    out = METHODS["model_stock"].fn([base + d, base - d], base, MergeParams(weights=[1, 1]), None)
    torch.testing.assert_close(out, base)


@pytest.mark.parametrize("density,lam", [(0.3, 1.0), (0.7, 0.8)])
def test_ties(density, lam):
    sds = _state_dicts(3, seed=torch.randint(0, 10**6, ()).item())
    names, weights = ["m0", "m1", "m2"], (0.5, 1.0, 0.8)
    theirs = mergekit_api.merge_state_dicts(sds, "ties", base="base", parameters={
        "weight": {"base": 0.0, **dict(zip(names, weights))}, "density": density, "lambda": lam})
    mine = _ours("ties", sds, MergeParams(weights=weights, lam=lam, density=density, normalize=True), names)
    _compare(mine, theirs)


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties"])
def test_dare_density_one_is_task_arithmetic_or_ties(method):
    sds = _state_dicts(2, seed=torch.randint(0, 10**6, ()).item())
    names, weights = ["m0", "m1"], (0.6, 0.9)
    ref_method = "task_arithmetic" if method == "dare_linear" else "ties"
    theirs = mergekit_api.merge_state_dicts(sds, ref_method, base="base", parameters={
        "weight": {"base": 0.0, **dict(zip(names, weights))}, "normalize": False})
    mine = _ours(method, sds, MergeParams(weights=weights, density=1.0), names)
    _compare(mine, theirs)


def test_dare_drop_and_l1_rescale():
    g = torch.Generator().manual_seed(5)
    delta = torch.randn(200, 50)
    out = random_drop_rescale(delta, 0.3, g)
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.3) < 0.02
    ratio = delta.abs().sum() / (delta * kept).abs().sum()  # L1 ratio, not 1/density
    torch.testing.assert_close(out[kept], delta[kept] * ratio)
    torch.testing.assert_close(out.abs().sum(), delta.abs().sum())
    assert abs(ratio.item() - 1 / 0.3) > 1e-3
    again = random_drop_rescale(delta, 0.3, torch.Generator().manual_seed(5))
    assert torch.equal(out, again)
