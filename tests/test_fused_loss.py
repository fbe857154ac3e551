"""The memory-bounded Eq. 2-8 of fused_loss.py against the plain code of ifcdsr.py."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import fused_loss
from conftest import tiny_model, views
from data import make_train_set
from ifcdsr import IFCDSR, PRINTED, Config, log_prob, unit


def nll_sum(h_id, E_id, h_img, E_img, target, alpha, temperature):
    """The sum of Eq. 6 as `IFCDSR.loss` computes it on its plain path: log_prob, gather, autograd."""
    return -log_prob(h_id, E_id, h_img, E_img, alpha, temperature).gather(1, target[:, None]).sum()


def example(use_image: bool, P: int = 9, N: int = 11, q: int = 5, e: int = 3, seed: int = 0):
    """Positions h, a raw ID matrix (a leaf, normalised by `unit` as in `IFCDSR.score`), a frozen
    image matrix with one zero row (an item without an image), and targets."""
    g = torch.Generator().manual_seed(seed)
    h_id = torch.randn(P, q, generator=g, requires_grad=True)
    h_img = torch.randn(P, e, generator=g, requires_grad=True) if use_image else None
    E_id_raw = torch.randn(N, q, generator=g, requires_grad=True)
    E_img = unit(torch.randn(N, e, generator=g)) if use_image else None
    if use_image:
        E_img[3] = 0.0
    return h_id, h_img, E_id_raw, E_img, torch.randint(0, N, (P,), generator=g)


def value_and_grads(loss_fn, h_id, h_img, E_id_raw, E_img, target):
    loss = loss_fn(h_id, unit(E_id_raw), h_img, E_img, target)
    inputs = [t for t in (h_id, h_img, E_id_raw) if t is not None]
    return [loss.detach(), *torch.autograd.grad(loss, inputs, allow_unused=True, materialize_grads=True)]


@pytest.mark.parametrize("use_image,alpha", [(True, 0.7), (True, 0.0), (True, 1.0), (False, 0.7)])
@pytest.mark.parametrize("temperature", [1.0, 0.1, 0.05])
def test_fused_loss_and_gradients_equal_the_plain_computation(use_image, alpha, temperature):
    """Eq. 6's sum and its gradients with respect to h_id, h_img and E_id (through the normalisation of
    Eq. 2) match the plain log_prob + autograd computation, whole or in chunks of 2 or 1 positions;
    α = 0 and α = 1 leave one branch (the other one's gradient is zero), use_image=False has none."""
    ex = example(use_image)
    expected = value_and_grads(lambda *a: nll_sum(*a, alpha, temperature), *ex)
    for chunk in (10**9, 22, 11):  # N = 11: all 9 positions, 2 and 1 per chunk
        got = value_and_grads(lambda *a: fused_loss.nll(*a, alpha, temperature, chunk), *ex)
        for a, b in zip(expected, got):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-5), (chunk, (a - b).abs().max())


@pytest.mark.parametrize("items", [slice(0, 4), slice(4, 11), slice(2, 9)])
def test_fused_loss_over_some_items_equals_the_plain_computation_on_those_rows(items):
    """A view's softmax over its own domain (softmax_over = "domain"): nll over the rows `items` of the full
    matrices, targets counted from its first, against log_prob on E[items]; the gradient of E_id is zero
    outside `items`, and chunks of 1 and 3 positions give the same."""
    h_id, h_img, E_id_raw, E_img, _ = example(True)
    n = len(range(11)[items])
    target = torch.arange(9) % n
    expected = value_and_grads(lambda h, E, hi, Ei, y: nll_sum(h, E[items], hi, Ei[items], y, 0.7, 1.0),
                               h_id, h_img, E_id_raw, E_img, target)
    for chunk in (10**9, n, 3 * n):
        got = value_and_grads(lambda *a: fused_loss.nll(*a, 0.7, 1.0, chunk, items), h_id, h_img, E_id_raw, E_img,
                              target)
        for a, b in zip(expected, got):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-5), (chunk, (a - b).abs().max())
    outside = torch.ones(11, dtype=torch.bool)
    outside[items] = False
    assert expected[3][outside].abs().max() == 0 and got[3][outside].abs().max() == 0


def test_fused_loss_at_a_small_temperature_subtracts_the_row_maximum():
    """τ = 0.01 (1/τ > 60) takes `_exp_`'s other path, exp(s - max s): logits reach ±100 and exp(100)
    overflows fp32. Each logit carries rounding of ~1e-5, so the comparison is relative to each
    tensor's norm."""
    ex = example(True)
    expected = value_and_grads(lambda *a: nll_sum(*a, 0.7, 0.01), *ex)
    for chunk in (10**9, 11):
        got = value_and_grads(lambda *a: fused_loss.nll(*a, 0.7, 0.01, chunk), *ex)
        for a, b in zip(expected, got):
            assert (a - b).norm() <= 1e-5 * b.norm(), (chunk, (a - b).norm() / b.norm())


def test_fused_loss_without_gradients_gives_the_same_value():
    h_id, h_img, E_id_raw, E_img, target = example(True)
    with torch.no_grad():
        E_id = unit(E_id_raw)
        expected = nll_sum(h_id, E_id, h_img, E_img, target, 0.7, 0.1)
        assert torch.allclose(fused_loss.nll(h_id, E_id, h_img, E_img, target, 0.7, 0.1, 22), expected, rtol=1e-6)


def test_fused_loss_under_bf16_autocast_stays_close_to_fp32():
    """On CUDA the Trainer runs under bf16 autocast; the CPU's autocast exercises the same code path:
    matmuls in bf16, softmax and the gradient's accumulation in fp32."""
    ex = example(True, P=16, N=40, q=8, e=8)
    expected = value_and_grads(lambda *a: nll_sum(*a, 0.7, 0.1), *ex)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = value_and_grads(lambda *a: fused_loss.nll(*a, 0.7, 0.1, 80), *ex)
    for a, b in zip(expected, got):
        assert b.dtype == torch.float32 and torch.allclose(a, b, rtol=0.05, atol=0.05)


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any operation produces while active."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.numel = max([self.numel] + [t.numel() for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)])
        return out


def test_fused_loss_never_holds_a_positions_by_items_tensor():
    """P = 64 positions, N = 50 items, chunk = 100 (2 positions at a time): the plain computation makes
    (P, N) = 3,200-element tensors (and a (2, P, N) stack); the fused loss never exceeds 2 x 50 = 100
    elements per tensor, nor the (P, d) and (N, d) sizes of its inputs and gradients."""
    ex = example(True, P=64, N=50, q=4, e=4)
    with LargestTensor() as plain:
        value_and_grads(lambda *a: nll_sum(*a, 0.7, 0.1), *ex)
    with LargestTensor() as fused:
        value_and_grads(lambda *a: fused_loss.nll(*a, 0.7, 0.1, 100), *ex)
    assert plain.numel >= 64 * 50
    assert fused.numel <= max(2 * 50, 64 * 4, 50 * 4)


# ----------------------------------------------------------------------------- the switch in IFCDSR


def model_pair(use_image: bool = True, multi: bool = True, **kw):
    """The same tiny model twice: once on the plain path of ifcdsr.py, once on fused_loss.py in chunks of
    2 positions (score_chunk = 2·N)."""
    return [tiny_model(use_image=use_image, multi=multi, score_chunk=chunk, **kw) for chunk in (10**9, 14)]


SETTINGS = [dict(use_image=True, multi=True), dict(use_image=False, multi=True), dict(use_image=True, multi=False),
            dict(use_image=True, multi=True, alpha=0.0), dict(use_image=True, multi=True, alpha=1.0)]
# the non-default readings, each alone and all three together, and the printed forms (the defaults)
READINGS = {"printed": dict(PRINTED), "all": dict(softmax_over="all"), "mean": dict(loss_norm="mean"),
            "tau0.1": dict(temperature=0.1), "all+mean+tau0.1": dict(softmax_over="all", loss_norm="mean",
                                                                  temperature=0.1)}


def test_the_readings_are_five_different_configurations():
    """Each id names what its case runs: the printed forms, each other reading switched alone, all three."""
    chosen = {name: Config().replace(**reading) for name, reading in READINGS.items()}
    assert chosen["printed"] == Config()
    assert len({(c.temperature, c.loss_norm, c.softmax_over) for c in chosen.values()}) == len(READINGS)


@pytest.mark.parametrize("reading", READINGS.values(), ids=READINGS.keys())
@pytest.mark.parametrize("setting", SETTINGS, ids=["full", "no-image", "merged-view", "alpha0", "alpha1"])
def test_model_loss_and_gradients_are_the_same_on_both_paths(setting, reading):
    t = make_train_set([[0, 3, 1, 4, 2], [5, 0, 6, 1], [1, 4, 2, 6]], num_x=3, max_len=5, pad=7)
    results = []
    for model in model_pair(**setting, **reading):
        total, parts = model.loss(t.inputs, t.targets)
        total.backward()
        # a branch that Eq. 5 weighs with 0 gets a zero gradient on one path and none on the other
        results.append((total.detach(), parts, {n: torch.zeros_like(p) if p.grad is None else p.grad
                                                for n, p in model.named_parameters()}))
    (a, parts_a, grads_a), (b, parts_b, grads_b) = results
    assert torch.allclose(a, b, atol=1e-6) and parts_a.keys() == parts_b.keys()
    assert all(abs(parts_a[v] - parts_b[v]) < 1e-5 for v in parts_a)
    for name, g in grads_a.items():
        assert torch.allclose(g, grads_b[name], atol=1e-6), name


def test_a_view_without_positions_adds_nothing_on_the_bounded_path():
    """A batch without a Y item: S^Y has no next-item position, so its sum has no term on either path (0), while the
    other views' positions take the bounded path (one loss, one choice of path for all its views)."""
    t = make_train_set([[0, 1, 2], [1, 0]], num_x=3, max_len=5, pad=7)
    (plain, plain_parts), (fused, parts) = (model.loss(t.inputs, t.targets) for model in model_pair())
    assert plain_parts["y"] == parts["y"] == 0 and parts.keys() == plain_parts.keys()
    assert torch.allclose(plain, fused, atol=1e-6)


@pytest.mark.parametrize("reading", READINGS.values(), ids=READINGS.keys())
@pytest.mark.parametrize("setting", SETTINGS, ids=["full", "no-image", "merged-view", "alpha0", "alpha1"])
@pytest.mark.parametrize("temperature", [None, 0.01])  # `_exp_` without (the reading's τ) and with the row maximum
def test_model_score_is_the_same_on_both_paths(temperature, setting, reading):
    """Eq. 8 over all items and over either domain only; history [0, 1] has no Y item (uniform P^Y). τ is
    the reading's (1 or 0.1) or 0.01."""
    hist = views([[0, 3, 1], [0, 1], [4, 5]])
    tau = {} if temperature is None else {"temperature": temperature}
    plain, fused = (m.eval() for m in model_pair(**setting, **{**reading, **tau}))
    for items in (slice(None), slice(0, 3), slice(3, 7)):
        assert torch.allclose(plain.score(hist, items), fused.score(hist, items), atol=1e-6), items


def test_the_demo_runs_the_plain_path_and_movie_book_the_bounded_one(monkeypatch):
    """With the default Config on a CPU, a demo-sized batch (256 sequences x 15 positions, N = 2,200) fits in
    half of `score_chunk`'s CPU value; Movie-Book's (N = 100,782; 332 cases an evaluation batch) does not."""
    cfg = Config()
    demo, movie_book = IFCDSR(cfg, 1000, 1200, torch.zeros(2200, 4)), IFCDSR(cfg, 36845, 63937, torch.zeros(100782, 4))
    cpu = torch.device("cpu")
    assert all(fused_loss.plain(rows, demo.N, demo.chunk(), cpu) for rows in (256 * 15, 1024))
    assert not any(fused_loss.plain(rows, movie_book.N, movie_book.chunk(), cpu) for rows in (332, 256 * 10))

    def refuse(*args, **kwargs):
        raise AssertionError("fused_loss was called")

    monkeypatch.setattr(fused_loss, "nll_views", refuse)
    monkeypatch.setattr(fused_loss, "view_sum", refuse)
    t = make_train_set([[0, 3, 1, 4, 2]], num_x=3, max_len=5, pad=7)
    model = tiny_model()
    model.loss(t.inputs, t.targets)
    model.score(views([[0, 3]]))
    model = tiny_model(score_chunk=1)
    with pytest.raises(AssertionError, match="fused_loss was called"):
        model.loss(t.inputs, t.targets)
