"""tools/simulate.py and `tools/benchmark.py --simulate`: the trainer's own step and evaluation on fake CUDA tensors under
CUDA's autocast, with no GPU: no host sync, one cast of each item matrix, the bytes within a budget."""
import pytest
import torch

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
    """CUDA autocast runs the products in bf16: E_id (N, q) is cast once per step, E_img never within a step
    (once per run), although every view and every product reads them."""
    _, sim, scen = small
    N = scen.items.num_items
    item_casts = {k: v for k, v in sim["casts"].items() if k.startswith(f"({N},")}
    assert item_casts == {f"({N}, {CFG.q}) torch.float32 -> torch.bfloat16": 1}


def test_the_step_moves_its_bytes_within_the_budget(small):
    """The budget, 0.2 GB, is what a step moves at this size (0.18 GB) with about 10% to spare; casting the
    item matrices for every product again, as autocast does by itself, moves 0.23 GB."""
    _, sim, _ = small
    assert sim["train"]["bytes"] <= 0.2e9


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


def test_simulate_command_prints_the_lines_to_parse(capsys):
    assert benchmark.main(["--simulate", "--items", "3000", "--seqs", "128", "--batch-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "syncs per step 0" in out and "bytes per step " in out and "projected 100 epochs " in out
