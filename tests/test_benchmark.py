"""Tests of tools/benchmark.py: its FLOP counts worked out by hand, its synthetic scenario, and its command."""
import math

import pytest
import torch

import train
from tools import benchmark, simulate
from ifcdsr import Config


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
    2·P·N·(q + e) = 360 FLOP, d/dh as much again, and d/dE_id 2·P·N·q = 240 (E_img is frozen): 960 on
    the plain path, and on fused_loss.py's whatever the chunk size."""
    cfg = Config(multi_attention=False, n_blocks=0)
    pad = 10
    inputs = benchmark.Views(*[torch.tensor([[pad, 1, 2, 3]])] * 3)
    targets = benchmark.Views(*[torch.tensor([[pad, 2, 3, 4]])] * 3)
    items = {"x": 4, "y": 6, "xy": 10}
    assert benchmark.flops(benchmark.step_gemms(inputs, targets, items, cfg, (4, 2))) == 960
    for rows in (1, 2, 3, 100):
        bounded = cfg.replace(score_chunk=10 * rows)
        assert benchmark.flops(benchmark.step_gemms(inputs, targets, items, bounded, (4, 2))) == pytest.approx(960)
    assert benchmark.flops(benchmark.step_gemms(inputs, None, items, cfg, (4, 2))) == 2 * 1 * 10 * 6


def test_scoring_flop_with_each_views_own_items():
    """softmax_over = "domain" with |X| = 4, |Y| = 6: S^X's one position scores 4 items, S^Y's 6 and S^{X+Y}'s
    three positions all 10; ID branch only (q = 4), plain path: 2·1·4·4·3 (logits, d/dh, d/dE) = 96,
    2·1·6·4·3 = 144 and 2·3·10·4·3 = 720: 960 in all."""
    cfg = Config(n_blocks=0, use_image=False, softmax_over="domain")
    pad = 10
    views = benchmark.Views(torch.tensor([[pad, pad, pad, 1]]), torch.tensor([[pad, pad, pad, 5]]),
                            torch.tensor([[pad, 1, 5, 2]]))
    targets = benchmark.Views(torch.tensor([[pad, pad, pad, 2]]), torch.tensor([[pad, pad, pad, 6]]),
                              torch.tensor([[pad, 5, 2, 6]]))
    items = {"x": 4, "y": 6, "xy": 10}
    assert benchmark.flops(benchmark.step_gemms(views, targets, items, cfg, (4,))) == 960


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
    assert benchmark.main(["--items", "300", "--seqs", "48", "--batch-size", "8", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for line in ("sequences/s", "achieved", "fp32 matmul peak", "ratio", "peak memory", "projected 100 epochs",
                 "step time against N", "step time against the batch size"):
        assert line in out, line
    ratios = [float(s.split()[-1]) for s in out.splitlines() if s.strip().startswith("ratio")]
    assert len(ratios) == 2 and all(0 < r < math.inf for r in ratios)


def test_a_simulated_epoch_is_counted_step_by_step(tmp_path):
    """`epoch_steps` runs `Trainer.train_epoch` on the simulated GPU, 2 batches of 8 (the merged view alone): a count
    per step, each with host time, no sync before the epoch's end, whose mean loss is read once; the trainer is
    left as it was."""
    cfg = Config(q=8, batch_size=8, multi_attention=False, target="X")
    scen = benchmark.synthetic_scenario(200, 16, cfg, image_width=4)
    with simulate.simulated_gpu() as counting:
        trainer = train.Trainer("ifcdsr", cfg, scen, torch.device("cuda"), tmp_path, resume=False)
        steps = benchmark.epoch_steps(trainer, counting)
    assert [step["syncs"] for step in steps] == [0, 1]
    assert all(step["kernels"] > 50 and step["host_seconds"] > step["seconds"] > 0 for step in steps)
    assert "batch" not in vars(trainer)
