"""Helpers shared by the tests: tiny models, views, scenario files, a tiny generated scenario and a finished
run on it."""
import contextlib
import io
import os
from pathlib import Path

if os.environ.get("IFCDSR_CUDA_TESTS") != "1":  # the suite runs on the CPU, the same with or without a GPU;
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # IFCDSR_CUDA_TESTS=1 leaves it visible for test_cuda.py
# one thread, here and in the commands the tests start: the tests' tensors are too small to gain from more,
# and on 2 cores the threads of one op would wait on each other (set OMP_NUM_THREADS to choose another count)
os.environ.setdefault("OMP_NUM_THREADS", "1")
import pytest  # noqa: E402
import torch  # noqa: E402

import data  # noqa: E402
import train  # noqa: E402
from data import make_demo  # noqa: E402
from ifcdsr import IFCDSR, Config  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # torch may have been imported before this file

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"  # real data beside the checkout, if any
TINY = dict(num_x=40, num_y=50, num_users=90, image_dim=8, categories=4)  # make_demo's sizes


def tiny_model(use_image=True, multi=True, target="X", seed=0, **kw):
    torch.manual_seed(seed)
    cfg = Config(q=8, use_image=use_image, multi_attention=multi, target=target, dropout=0.0, **kw)
    E_img = torch.randn(7, 4) if use_image else None
    return IFCDSR(cfg, num_x=3, num_y=4, E_img=E_img)


def views(rows, num_x=3, length=5, pad=7):
    return data._views(rows, num_x, length, pad)


def write_scenario(folder: Path, train_lines, valid_lines=None, test_lines=None, num_x=3, num_y=4):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Alist.txt").write_text("".join(f"{100 + i}\tA{i}\t{i}\n" for i in range(num_x)))
    (folder / "Blist.txt").write_text("".join(f"{200 + i}\tB{i}\t{i}\n" for i in range(num_y)))
    for name, lines in (("traindata_new.txt", train_lines), ("validdata_new.txt", valid_lines or train_lines),
                        ("testdata_new.txt", test_lines or train_lines)):
        (folder / name).write_text("".join(line + "\n" for line in lines))
    return folder


def line(user, *events):
    return f"{user}\t{user}\t" + "\t".join(f"{i}|{t}|2020-01-01 00:00:00|" for i, t in events)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_demo(tmp_path_factory.mktemp("scen") / "tiny", seed=0, **TINY)


def run_cli(*args):
    return train.main([str(a) for a in args])


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """(run folder, what train.py printed) of IFCDSR and popularity, 2 epochs, on a tiny generated scenario."""
    folder = tmp_path_factory.mktemp("run")
    scenario = make_demo(folder / "tiny", seed=0, **TINY)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert run_cli("--data-dir", scenario, "--epochs", 2, "--batch-size", 16, "--device", "cpu",
                       "--out", folder / "out") == 0
    return folder / "out", printed.getvalue()


def full_batch_losses(model, train_set, steps: int = 8, lr: float = 1e-3) -> tuple[list[float], dict]:
    """Adam on the whole training set for a few steps: the losses, and the last step's per-view parts."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss, parts = model.loss(train_set.inputs, train_set.targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, parts
