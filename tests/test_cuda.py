"""On a real GPU: what the CPU suite and the simulated GPU cannot show. Every test here is marked `cuda` and
skipped without one; tests/conftest.py hides the GPU from the rest of the suite unless IFCDSR_CUDA_TESTS=1:

    IFCDSR_CUDA_TESTS=1 python -m pytest -m cuda

No host sync in a step or an evaluation batch, CUDA against the CPU, the memory-efficient attention kernel at
the real widths, the checkpoint snapshot taken before the next step, --deterministic's bit-identical resume,
and the demo and the benchmark end to end.
"""
import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

import train
from conftest import TINY, run_cli
from data import load_scenario, make_demo
from evaluate import eval_cases, negatives, on_device, rank_batch, rank_cases
from ifcdsr import AttentionEncoder, Config

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU "
                                                   "(IFCDSR_CUDA_TESTS=1 python -m pytest -m cuda)")]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def scen(tmp_path_factory):
    return load_scenario(make_demo(tmp_path_factory.mktemp("scen") / "tiny", seed=0, **TINY), max_len=15,
                         use_images=True)


def trainer(scen, device, tmp_path, **overrides) -> train.Trainer:
    cfg = Config(q=16, dropout=0.0, batch_size=16, score_chunk=2**20).replace(**overrides)
    return train.Trainer("ifcdsr", cfg, scen, torch.device(device), tmp_path / device, resume=False)


def test_a_training_step_and_an_evaluation_batch_never_wait_for_the_gpu(scen, tmp_path):
    t = trainer(scen, "cuda", tmp_path)
    order = torch.randperm(len(scen.train))
    t.model.train()
    t.step(*t.batch(order[:16]))  # the first step makes Adam's state and the buffers
    cases = eval_cases(scen.valid, scen, "X")
    neg = negatives(cases, t.items, "valid", "X")
    resident = on_device(cases, t.items, neg, t.device, t.eval_batch())
    score = t.model.scorer()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        t.step(*t.batch(order[16:32]))
        t.model.eval()
        with t.exact():
            rank_batch(score, cases, resident, t.items, slice(0, t.eval_batch()), scen.items.num_items)
    finally:
        torch.cuda.set_sync_debug_mode(0)


def losses_and_gradients(scen, device, tmp_path, bf16=True):
    """One step's loss and gradients from the same initial weights (seed 0), under autocast (bf16 on CUDA) or not."""
    torch.manual_seed(0)
    t = trainer(scen, device, tmp_path)
    t.model.train()
    with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16 and device == "cuda"):
        loss, _ = t.model.loss(*t.batch(torch.arange(16)))
    loss.backward()
    return loss.float().cpu(), {k: p.grad.float().cpu() for k, p in t.model.named_parameters() if p.grad is not None}


def test_one_step_on_cuda_agrees_with_the_cpu(scen, tmp_path):
    """Dropout 0, the same initial weights: the bf16 step within bf16's tolerance of the CPU's fp32 one; in fp32
    the GPU's bounded code (fused_loss, always on CUDA) within 1e-5 of the CPU's plain code."""
    cpu_loss, cpu_grads = losses_and_gradients(scen, "cpu", tmp_path)
    for bf16, rtol in ((True, 2e-2), (False, 1e-5)):
        loss, grads = losses_and_gradients(scen, "cuda", tmp_path, bf16)
        assert torch.allclose(loss, cpu_loss, rtol=rtol)
        for k, g in cpu_grads.items():
            assert torch.allclose(grads[k], g, rtol=100 * rtol, atol=rtol * g.abs().max().item()), (bf16, k)


def test_ranks_are_the_same_on_both_devices(scen, tmp_path):
    ranks = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        t = trainer(scen, device, tmp_path)
        t.model.eval()
        cases = eval_cases(scen.test, scen, "X")
        with t.exact():
            ranks[device] = rank_cases(t.model.scorer(), cases, t.items, negatives(cases, t.items, "test", "X"), t.device,
                                       t.eval_batch(), scen.items.num_items)
    for p in ranks["cpu"]:
        assert torch.equal(ranks["cpu"][p], ranks["cuda"][p]), p


@pytest.mark.parametrize("width", [256, 512])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_attention_runs_the_memory_efficient_kernel_at_the_real_widths(width, dtype):
    """q = 256 (the ID branch) and e = 512 (CLIP ViT-B/32's image branch), forward and backward, with only the
    memory-efficient kernel allowed: a padding mask rules out flash attention."""
    enc = AttentionEncoder(width, Config(dropout=0.1)).cuda().train()
    F_seq = torch.randn(64, 15, width, device="cuda", requires_grad=True)
    is_pad = torch.arange(15, device="cuda")[None] < torch.randint(0, 14, (64, 1), device="cuda")
    with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION), torch.autocast("cuda", dtype=dtype,
                                                                     enabled=dtype == torch.bfloat16):
        H = enc(F_seq, is_pad)
    H.float().sum().backward()
    assert H.isfinite().all() and F_seq.grad.isfinite().all()


def test_the_checkpoint_holds_the_weights_before_the_next_step_and_loads_without_a_gpu(scen, tmp_path):
    t = trainer(scen, "cuda", tmp_path)
    t.model.train()
    order = torch.randperm(len(scen.train))
    t.step(*t.batch(order[:16]))
    before = {k: v.detach().cpu().clone() for k, v in t.model.state_dict().items()}
    path = tmp_path / "last_X.pt"
    t.checkpoints.write({path: train.training_state(t)})
    for b in range(1, 5):  # Adam steps on while the file is written
        t.step(*t.batch(order[16 * b:16 * (b + 1)]))
    t.checkpoints.wait()
    code = ("import sys, torch; s = torch.load(sys.argv[1], map_location='cpu', weights_only=True); "
            "torch.save(s['model'], sys.argv[2])")
    subprocess.run([sys.executable, "-c", code, str(path), str(tmp_path / "weights.pt")], check=True,
                   env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    saved = torch.load(tmp_path / "weights.pt", weights_only=True)
    assert saved.keys() == before.keys() and all(torch.equal(saved[k], before[k]) for k in before)


def test_deterministic_two_epochs_equal_one_epoch_and_a_resume(tmp_path):
    scenario = make_demo(tmp_path / "tiny", seed=0, **TINY)
    common = ("--data-dir", scenario, "--models", "ifcdsr", "--target", "X", "--batch-size", 16, "--device", "cuda",
              "--deterministic")
    assert run_cli(*common, "--epochs", 2, "--out", tmp_path / "straight") == 0
    assert run_cli(*common, "--epochs", 1, "--out", tmp_path / "resumed") == 0
    assert run_cli(*common, "--epochs", 2, "--out", tmp_path / "resumed", "--resume") == 0
    a, b = (json.loads((tmp_path / d / "results.json").read_text())["runs"]["ifcdsr"][0] for d in ("straight",
                                                                                                "resumed"))
    assert a["test"] == b["test"] and [h["loss"] for h in a["history"]["X"]] == [h["loss"] for h in
                                                                                 b["history"]["X"]]
    w, v = (torch.load(tmp_path / d / "ifcdsr" / "seed0" / "last_X.pt", weights_only=True)["model"]
            for d in ("straight", "resumed"))
    assert all(torch.equal(w[k], v[k]) for k in w)


def test_the_demo_and_the_benchmark_run_on_the_gpu(tmp_path):
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert run_cli("--device", "cuda", "--out", tmp_path / "demo") == 0
    assert "device cuda" in printed.getvalue() and "IFCDSR  " in printed.getvalue()
    result = subprocess.run([sys.executable, "-m", "tools.benchmark", "--device", "cuda", "--seqs", 4096], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
