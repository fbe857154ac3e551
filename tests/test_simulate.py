"""tools/simulate.py and `tools/benchmark.py --simulate`: the trainer's own epoch and evaluation on fake CUDA tensors
under CUDA's autocast, with no GPU: no host sync, one cast of each item matrix, the bytes within a budget, the host's
time beside the device's."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensor

from tools import benchmark
import ifcdsr
from tools import simulate
from ifcdsr import Config

CFG = Config(q=32, batch_size=32, use_image=True, multi_attention=True, target="X")


@pytest.fixture(scope="module")
def small():
    """N = 3,000 items, 128 training sequences, e = 64: the step's scoring is still most of its work."""
    scen = benchmark.synthetic_scenario(3000, 128, CFG, image_width=64)
    return simulate.H200, benchmark.simulated(simulate.H200, CFG, scen), scen


def test_a_training_step_and_an_evaluation_batch_never_wait_for_the_device(small):
    """Every shape that depends on the data comes from the CPU batch, the losses stay on the device and the
    finiteness verdicts are read once per pass: 0 syncs in a step and in a batch, 3 in a pass (the two rank
    tensors and the verdicts)."""
    _, sim, _ = small
    assert sim["train"]["syncs"] == 0 and sim["eval"]["syncs"] == 0 and sim["pass"]["syncs"] == 3
    assert sim["train"]["kernels"] > 100 and sim["train"]["flop"] > 0


def test_the_item_matrices_are_cast_once_a_step_under_autocast(small):
    """CUDA autocast runs the products in bf16: E_id (N + 1, q: with the padding row) is cast once per step, E_img
    (N, e) never within a step (once per run), although every view and every product reads them."""
    _, sim, scen = small
    N = scen.items.num_items
    item_casts = {k: v for k, v in sim["casts"].items() if k.startswith((f"({N},", f"({N + 1},"))}
    assert item_casts == {f"({N + 1}, {CFG.q}) torch.float32 -> torch.bfloat16": 1}


def test_the_step_moves_its_bytes_within_the_budget(small):
    """The budget, 0.17 GB, is what a step moves at this size (0.15 GB) with about 10% to spare; casting the
    item matrices for every product again, as autocast does by itself, moves 0.20 GB."""
    _, sim, _ = small
    assert sim["train"]["bytes"] <= 0.17e9


def test_train_epoch_runs_step_by_step_and_each_kernel_costs_the_host_an_eager_op_and_a_launch(small):
    """`Trainer.train_epoch` itself over SIM_STEPS batches: every step issues the same kernels and none waits for the
    device (the epoch's end reads its mean losses: the last step's syncs); the host pays EAGER_OP_S + LAUNCH_S a
    kernel, and a little more for its own ops (the CPU batch's shapes) and the copies between host and device."""
    _, sim, _ = small
    steps = sim["epoch"]
    assert len(steps) == benchmark.SIM_STEPS and sim["train"] is steps[1]
    assert len({step["kernels"] for step in steps[:-1]}) == 1 and all(step["syncs"] == 0 for step in steps[:-1])
    assert steps[-1]["syncs"] > 0
    for step in steps:
        issued = step["kernels"] * (simulate.EAGER_OP_S + simulate.LAUNCH_S)
        assert issued < step["host_seconds"] < 1.1 * issued


def test_a_step_takes_the_larger_of_host_and_device_time(small):
    """The host runs up to a step ahead, so a step of the projection is max(host, device): at this size the host's."""
    _, sim, _ = small
    step = sim["projected"]["step_s"]
    assert step == max(sim["train"]["host_seconds"], sim["train"]["seconds"]) == sim["train"]["host_seconds"]
    assert sim["projected"]["epoch_s"] >= sim["steps"] * step


def test_pinned_memory_and_copies_to_the_device_stand_in_without_a_driver():
    """`fused_loss.host_to` pins and copies without a sync; a copy back to the host is a real tensor of the values."""
    with simulate.simulated_gpu() as counting:
        on_device = ifcdsr.host_to("cuda", torch.arange(4))
        assert sum(counting.syncs.values()) == 0 and counting.host_seconds > 0
        host = (on_device * 2).cpu()
        assert not isinstance(host, FakeTensor) and host.tolist() == [0, 2, 4, 6]


def test_the_host_cost_of_an_eager_op_is_measured_in_microseconds():
    assert 1e-7 < simulate.eager_op_seconds(layers=2, runs=5) < 1e-3


def test_a_read_of_device_values_counts_as_a_host_sync():
    """The instrument itself: `trim` on a device tensor reads its values (one sync), and so does the model's
    loss when it is not handed the batch's shapes; given them, it does not."""
    model_cfg = Config(q=8, dropout=0.0, use_image=False)
    data = benchmark.synthetic_scenario(200, 8, model_cfg, image_width=4).train
    with simulate.simulated_gpu() as counting:
        model = ifcdsr.IFCDSR(model_cfg, 73, 127).to("cuda")
        counting.reset()
        inputs, targets = data.inputs.to("cuda"), data.targets.to("cuda")  # blocking copies: 6 syncs
        assert sum(counting.syncs.values()) == 6
        counting.reset()
        ifcdsr.trim(model.pad, inputs.xy)
        assert sum(counting.syncs.values()) == 1
        counting.reset()
        model.loss(inputs, targets)
        assert sum(counting.syncs.values()) > 0
        counting.reset()
        model.loss(inputs, targets, ifcdsr.shapes(model.pad, data.inputs, data.targets, "cuda"))
        assert sum(counting.syncs.values()) == 0
    assert not torch.cuda.is_available()  # everything is as it was after the simulation


def test_simulate_command_prints_the_lines_to_parse(small, capsys, monkeypatch):
    """The command's printout, of the module's simulation (`small`: simulated once, the slow part)."""
    monkeypatch.setattr(benchmark, "simulated", lambda gpu, cfg, scen: small[1])
    assert benchmark.main(["--simulate", "--items", "3000", "--seqs", "128", "--batch-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "syncs per step 0" in out and "bytes per step " in out and "projected 100 epochs " in out
    assert "host time, ms" in out and "device time, ms" in out and "Trainer.train_epoch over 3 batches" in out
