"""Tests of the fused, memory-bounded loss (`ifcdsr.nll`) and of the benchmark (issue 5: scale and speed)."""
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import benchmark
import train
from ifcdsr import Config, _nll_sum, nll, unit


def example(use_image: bool, P: int = 9, N: int = 11, q: int = 5, e: int = 3, seed: int = 0):
    """Positions h, a raw ID matrix (a leaf, normalised by `unit` as in `IFCDSR.item_matrices`), a frozen
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
    expected = value_and_grads(lambda *a: _nll_sum(*a, alpha, temperature), *ex)
    for chunk in (10**9, 22, 11):  # N = 11: all 9 positions, 2 and 1 per chunk
        got = value_and_grads(lambda *a: nll(*a, alpha, temperature, chunk), *ex)
        for a, b in zip(expected, got):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-5), (chunk, (a - b).abs().max())



def test_fused_loss_at_a_small_temperature_subtracts_the_row_maximum():
    """τ = 0.01 (1/τ > 60) takes `_exp_`'s other path, exp(s - max s): logits reach ±100 and exp(100)
    overflows fp32. Each logit carries rounding of ~1e-5, so the comparison is relative to each
    tensor's norm."""
    ex = example(True)
    expected = value_and_grads(lambda *a: _nll_sum(*a, 0.7, 0.01), *ex)
    for chunk in (10**9, 11):
        got = value_and_grads(lambda *a: nll(*a, 0.7, 0.01, chunk), *ex)
        for a, b in zip(expected, got):
            assert (a - b).norm() <= 1e-5 * b.norm(), (chunk, (a - b).norm() / b.norm())


def test_fused_loss_without_gradients_gives_the_same_value():
    h_id, h_img, E_id_raw, E_img, target = example(True)
    with torch.no_grad():
        E_id = unit(E_id_raw)
        expected = _nll_sum(h_id, E_id, h_img, E_img, target, 0.7, 0.1)
        assert torch.allclose(nll(h_id, E_id, h_img, E_img, target, 0.7, 0.1, 22), expected, rtol=1e-6)


def test_fused_loss_under_bf16_autocast_stays_close_to_fp32():
    """On CUDA the Trainer runs under bf16 autocast; the CPU's autocast exercises the same code path:
    matmuls in bf16, softmax and the gradient's accumulation in fp32."""
    ex = example(True, P=16, N=40, q=8, e=8)
    expected = value_and_grads(lambda *a: _nll_sum(*a, 0.7, 0.1), *ex)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = value_and_grads(lambda *a: nll(*a, 0.7, 0.1, 80), *ex)
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
        value_and_grads(lambda *a: _nll_sum(*a, 0.7, 0.1), *ex)
    with LargestTensor() as fused:
        value_and_grads(lambda *a: nll(*a, 0.7, 0.1, 100), *ex)
    assert plain.numel >= 64 * 50
    assert fused.numel <= max(2 * 50, 64 * 4, 50 * 4)


# ----------------------------------------------------------------------------- the benchmark


def test_encoder_flop_by_hand():
    """One encoder over B = 2 sequences of L = 3 tokens, width d = 4, 2 blocks: per block the linear
    layers cost 2·T·d·(3d + d + d + d) = 2·6·4·24 = 1,152 FLOP (T = B·L = 6) and attention
    4·B·L²·d = 4·2·9·4 = 288, so the forward is 2 x 1,440 = 2,880 FLOP; training adds a backward of
    twice that: 8,640."""
    cfg = Config(n_blocks=2, n_heads=1)
    assert benchmark.flops(benchmark.encoder_gemms(2, 3, 4, cfg, train=False)) == 2880
    assert benchmark.flops(benchmark.encoder_gemms(2, 3, 4, cfg, train=True)) == 8640


def test_scoring_flop_by_hand():
    """One view with P = 3 positions over N = 10 items, widths q = 4, e = 2: the logits cost
    2·P·N·(q + e) = 360 FLOP, d/dh as much again, and d/dE_id 2·P·N·q = 240 (E_img is frozen): 960,
    whatever the chunk size."""
    cfg = Config(multi_attention=False, n_blocks=0)
    pad = 10
    inputs = benchmark.Views(*[torch.tensor([[pad, 1, 2, 3]])] * 3)
    targets = benchmark.Views(*[torch.tensor([[pad, 2, 3, 4]])] * 3)
    for rows in (1, 2, 3, 100):
        assert benchmark.flops(benchmark.step_gemms(inputs, targets, 10, rows, cfg, (4, 2))) == pytest.approx(960)
    assert benchmark.flops(benchmark.step_gemms(inputs, None, 10, 2, cfg, (4, 2))) == 2 * 1 * 10 * 6


def test_synthetic_scenario_has_movie_book_shape():
    """Domain sizes in Movie-Book's ratio 36,845 : 63,937, sequences of 6..15 items with mean ~11.98, at
    least 3 of each domain, and held-out cases in the paper's proportion (7,644 valid, 7,708 test)."""
    scen = benchmark.synthetic_scenario(1000, 2000, Config(), image_width=8)
    pad = scen.items.num_items
    assert (scen.items.num_x, scen.items.num_y) == (366, 634)
    assert (len(scen.train), len(scen.valid), len(scen.test)) == (2000, 261, 263)
    length = (scen.train.inputs.xy != pad).sum(1) + 1  # the inputs hold all but the last item
    assert length.min() >= 6 and length.max() <= 15 and abs(length.double().mean() - 11.98) < 0.2
    for view in ("x", "y"):
        assert ((getattr(scen.train.inputs, view) != pad).sum(1) + 1 >= 3).all()
    assert ((scen.train.inputs.x < scen.items.num_x) | (scen.train.inputs.x == pad)).all()
    assert (scen.train.inputs.y >= scen.items.num_x).all()
    assert scen.E_img.shape == (1000, 8)


def test_benchmark_command_runs_and_reports(capsys):
    assert train.main(["--benchmark", "--bench-items", "300", "--bench-seqs", "48", "--batch-size", "8",
                       "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for line in ("sequences/s", "achieved", "fp32 matmul peak", "ratio", "peak memory", "projected 100 epochs",
                 "step time against N", "step time against the batch size"):
        assert line in out, line
    ratios = [float(s.split()[-1]) for s in out.splitlines() if s.strip().startswith("ratio")]
    assert len(ratios) == 2 and all(0 < r < math.inf for r in ratios)
