"""Speed and memory of IFCDSR at Movie-Book size, on a synthetic scenario built in memory, and of CLIP.

    python -m tools.benchmark [--items 100782] [--seqs 58515] [--batch-size 256] [--device auto]
    python -m tools.benchmark --simulate [h200]                        # the same epoch and evaluation on a simulated GPU
    python -m tools.benchmark --clip [--images 2000] [--repeats 5]     # CLIP's encode_image and the embed command

The first times the real training loop (`Trainer.train_epoch`) over a few batches after a warm-up, and
one evaluation pass (`Trainer.evaluate`) over the test cases of both target domains, then
prints throughput, achieved GFLOP/s against plain matmuls of the same shapes and dtype measured in
the same run, peak memory, a projection of 100 epochs, and how a step grows with N and the batch; on
CUDA also the simulated figures. --simulate needs no GPU: it runs `Trainer.train_epoch` and an evaluation on
fake CUDA tensors (tools/simulate.py), counts each step's and batch's kernels, host syncs, FLOP and bytes, gives
them a host and a device time, and projects 100 epochs with each step at the larger of the two.

Cost model: FLOP counts the matmuls only (a multiply-add is 2 FLOP); elementwise work is the
difference between the achieved and the matmul-only rate. A training step of B sequences costs,
per view v (3 views), with P_v prediction positions, T_v = B·L_v encoder tokens (L_v the view's
width after trimming) and each branch width d in (q, e):
    scoring (Eq. 2-6)                2·P_v·N·d forward (logits), 2·P_v·N·d for d/dh,
                                     2·P_v·N·q for d/dE_id (E_img is frozen: no d/dE_img)
    encoder (Eq. 1), per block       2·T_v·d·(3d + d + d + d) linear layers + 4·B·L_v²·d attention,
                                     forward; the backward costs twice the forward
so an epoch of S sequences with p positions per sequence (p ≈ 2·length - 3 over the three views)
costs about 2·S·p·N·(3q + 2e) FLOP in scoring; at Movie-Book size (S = 58,515, p ≈ 21,
N = 100,782, q = 256, e = 512) that is 4.4·10^14 FLOP, and the encoders add ~5%.
Evaluation is the forward alone: 2·N·(q + e) per case and view, plus the encoders' forward.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import math
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils._pytree import tree_leaves

import clip_loader
import data
import fused_loss
from data import Items, Scenario, TrainSet, Views
from evaluate import eval_cases, negatives, on_device, rank_batch, rank_cases
from ifcdsr import RANGES, Config, trim
from tools import embed, simulate
from train import Trainer, bounded, training_state

MOVIE_BOOK = {"num_x": 36_845, "num_y": 63_937, "train": 58_515, "valid": 2_032 + 5_612, "test": 1_978 + 5_730,
              "avg_length": 11.98}  # paper Table 1
STEPS, WARMUP = 3, 1  # timed training steps, after warm-up steps
SIM_STEPS = 3  # the steps of the simulated epoch, after a first step that makes Adam's state
SCALE_ITEMS = (0.1, 0.3, 1.0)  # N of the step-time scaling, as shares of --bench-items (10k, 30k, 100k)
SCALE_BATCH = (0.25, 0.5, 1.0)  # batch sizes of the step-time scaling, as shares of the batch (64, 128, 256)
E_WIDTH = 512  # e of the synthetic E_img: CLIP ViT-B/32's width, the paper's e


# ----------------------------------------------------------------------------- the synthetic scenario


def synthetic_scenario(num_items: int, num_seqs: int, cfg: Config, image_width: int, seed: int = 0) -> Scenario:
    """A two-domain scenario of Movie-Book's shape (domain sizes in Movie-Book's ratio, lengths 6..15 with
    mean 11.98, at least 3 items of each domain), drawn with vectorised numpy; only its sizes matter here.
    Held-out sequences (valid + test) are added in Movie-Book's proportion to the training sequences."""
    rng = np.random.default_rng(seed)
    num_x = max(1, round(num_items * MOVIE_BOOK["num_x"] / (MOVIE_BOOK["num_x"] + MOVIE_BOOK["num_y"])))
    num_y = num_items - num_x
    held = [round(num_seqs * MOVIE_BOOK[s] / MOVIE_BOOK["train"]) for s in ("valid", "test")]
    S, width = num_seqs + sum(held), 15
    length = 6 + rng.binomial(width - 6, (MOVIE_BOOK["avg_length"] - 6) / (width - 6), S)  # (S,) mean 11.98
    n_x = rng.integers(3, length - 2)  # (S,) items of domain X: 3 .. length - 3
    # the n_x smallest random keys of a row mark its domain-X positions; positions >= length are unused
    keys = np.where(np.arange(width) < length[:, None], rng.random((S, width)), np.inf)
    in_x = keys.argsort(1).argsort(1) < n_x[:, None]  # (S, width)
    # a long tail inside each domain: item = floor(n·u³)
    u = rng.random((S, width)) ** 3
    items = np.where(in_x, (u * num_x).astype(np.int64), num_x + (u * num_y).astype(np.int64))
    seqs = [row[:n].tolist() for row, n in zip(items, length)]
    pad = num_items
    train, valid, test = seqs[:num_seqs], seqs[num_seqs:num_seqs + held[0]], seqs[num_seqs + held[0]:]
    E_img = torch.from_numpy(rng.standard_normal((num_items, image_width), dtype=np.float32))
    return Scenario(name=f"synthetic-{num_items}", path=Path("."), items=Items([""] * num_items, num_x, num_y),
                    train=data.make_train_set(train, num_x, cfg.max_len, pad),
                    valid=data.make_eval_set(valid, num_x, cfg.max_len, pad),
                    test=data.make_eval_set(test, num_x, cfg.max_len, pad), E_img=E_img,
                    data_sha256=f"synthetic-{seed}", images_sha256=None)


def head(train: TrainSet, n: int) -> TrainSet:
    return TrainSet(train.inputs[:n], train.targets[:n])


def copy_generator(g: torch.Generator) -> torch.Generator:
    """A generator in the same state: it draws the same batch order as `Trainer.train_epoch` will."""
    return torch.Generator().set_state(g.get_state())


# ----------------------------------------------------------------------------- FLOP: the matmuls of a step


def encoder_gemms(B: int, L: int, d: int, cfg: Config, train: bool) -> list[tuple]:
    """(batch, m, k, n, count) of the matmuls of one AttentionEncoder (Eq. 1) over B sequences of L tokens."""
    T, h = B * L, cfg.n_heads
    linears = [(d, 3 * d), (d, d), (d, d), (d, d)]  # qkv, out, feed-forward x2 of each block
    out = []
    for d_in, d_out in linears:
        out.append((1, T, d_in, d_out, cfg.n_blocks))  # forward: x·W^T
        if train:
            out += [(1, T, d_out, d_in, cfg.n_blocks), (1, d_out, T, d_in, cfg.n_blocks)]  # dx, dW
    # attention: Q·K^T and softmax·V, per sequence and head
    for m, k, n in ((L, d // h, L), (L, L, d // h)):
        out.append((B * h, m, k, n, cfg.n_blocks))
        if train:
            out.append((B * h, m, n, k, 2 * cfg.n_blocks))  # two backward matmuls of the same size
    return out


def softmax_sizes(model) -> dict[str, int]:
    """The number of items of each view's softmax (`IFCDSR.softmax_items`), what `step_gemms` takes."""
    return {v: len(range(model.N)[model.softmax_items(v)]) for v in ("x", "y", "xy")}


def step_gemms(views: Views, targets: Views | None, items: dict[str, int], cfg: Config, widths: tuple,
               chunk: int | None = None, device: str = "cpu") -> list[tuple]:
    """The matmuls of one training step (targets given) or one evaluation batch (targets None); `items`: the
    number of items of each view's softmax (`IFCDSR.softmax_items`), "xy" all N; `chunk`: `IFCDSR.chunk()`.

    Scoring runs all P positions at once (the plain path of `IFCDSR.loss`/`score`, on a CPU) or in chunks of
    chunk // (the view's items) (fused_loss.py); a chunk count may be fractional, so count times size is
    exact."""
    train, N, out = targets is not None, items["xy"], []
    chunk = chunk or fused_loss.chunk(cfg.score_chunk, torch.device("cpu"))
    positions = {v: int((getattr(targets, v) != N).sum()) if train else len(views.xy) for v in cfg.view_weights()}
    plain = fused_loss.plain(max(positions.values()), N, chunk, torch.device(device))  # one choice a batch
    for view, P in positions.items():  # P: the view's prediction positions
        seq, n = getattr(views, view), items[view]
        B, L = seq.shape[0], trim(N, seq)[0].shape[1]
        c = max(1, P if plain else min(P, chunk // n))
        for b, d in enumerate(widths):
            out += encoder_gemms(B, L, d, cfg, train)
            out.append((1, c, d, n, P / c))  # (Eq. 2) logits a·E^T
            if train:
                out.append((1, c, n, d, P / c))  # d/da = G·E
                if b == 0:
                    out.append((1, n, c, d, P / c))  # d/dE_id = G^T·a
    return out


def flops(gemms: list[tuple]) -> float:
    return sum(2.0 * batch * m * k * n * count for batch, m, k, n, count in gemms)


def matmul_seconds(gemms: list[tuple], device: torch.device, cache: dict, dtype=torch.float32,
                   repeats: int = 3) -> float:
    """The time plain matmuls of these shapes take on `device` in `dtype` (each shape timed alone, best of
    `repeats`, cached per shape), times their counts: the matmul-only time of the same work, in the dtype
    the trainer's products run in (bf16 under CUDA's autocast in training, where the encoders' products run in
    TF32 and are timed in bf16 too; fp32 in evaluation and on a CPU).
    The output is allocated once beforehand, so this is the kernel's time alone: on CPU a fresh (m, n) result
    adds page faults that can cost as much as the product, and the ratio would flatter the code."""
    total = 0.0
    for batch, m, k, n, count in gemms:
        if (batch, m, k, n, dtype) not in cache:
            A, B = (torch.randn(batch, *size, device=device, dtype=dtype) for size in ((m, k), (k, n)))
            C = torch.empty(batch, m, n, device=device, dtype=dtype)
            mm = (lambda: torch.mm(A[0], B[0], out=C[0])) if batch == 1 else (lambda: torch.bmm(A, B, out=C))
            mm()
            best = math.inf
            for _ in range(repeats):
                sync(device)
                t0 = time.perf_counter()
                mm()
                sync(device)
                best = min(best, time.perf_counter() - t0)
            cache[(batch, m, k, n, dtype)] = best
        total += cache[(batch, m, k, n, dtype)] * count
    return total


# ----------------------------------------------------------------------------- measuring


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        with contextlib.suppress(OSError):  # Linux: "5" resets the peak RSS (VmHWM) of this process
            Path("/proc/self/clear_refs").write_text("5")


def peak_memory_gb(device: torch.device) -> float:
    """Peak memory since `reset_peak_memory`: allocated tensors on CUDA, the process's resident set on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 1e9
    with contextlib.suppress(OSError, StopIteration):
        status = Path("/proc/self/status").read_text().splitlines()
        return int(next(s for s in status if s.startswith("VmHWM:")).split()[1]) * 1024 / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # lifetime peak elsewhere


class Bench:
    """One synthetic scenario and the trainers that run on it."""

    def __init__(self, scen: Scenario, cfg: Config, device: torch.device, folder: Path):
        self.scen, self.cfg, self.device, self.folder = scen, cfg, device, folder
        self.mm_cache = {}
        self.widths = (cfg.q, scen.E_img.shape[1]) if cfg.use_image else (cfg.q,)

    def trainer(self, cfg: Config):
        return Trainer("ifcdsr", cfg, self.scen, self.device, self.folder / cfg.target, resume=False)

    def train_steps(self, batch_size: int, steps: int, warmup: int) -> dict:
        """Time `steps` steps of `Trainer.train_epoch` at this batch size, after `warmup` steps."""
        cfg = self.cfg.replace(batch_size=batch_size)
        trainer, full = self.trainer(cfg), self.scen.train
        trainer.scen = replace(self.scen, train=head(full, warmup * batch_size))
        with contextlib.redirect_stdout(io.StringIO()):  # train_epoch's progress lines
            trainer.train_epoch()
            trainer.scen = replace(self.scen, train=head(full, steps * batch_size))
            order = torch.randperm(steps * batch_size, generator=copy_generator(trainer.shuffle))  # its batches
            reset_peak_memory(self.device)
            sync(self.device)
            t0 = time.perf_counter()
            trainer.train_epoch()
            sync(self.device)
            seconds = time.perf_counter() - t0
        train, low = trainer.scen.train, torch.bfloat16 if self.device.type == "cuda" else torch.float32
        gemms = [g for b in order.split(batch_size) for g in step_gemms(
            train.inputs[b], train.targets[b], softmax_sizes(trainer.model), cfg, self.widths,
            trainer.model.chunk(), self.device.type)]
        return {"step_s": seconds / steps, "seq_per_s": steps * batch_size / seconds,
                "peak_gb": peak_memory_gb(self.device), "flop": flops(gemms) / steps,
                "mm_s": matmul_seconds(gemms, self.device, self.mm_cache, low) / steps,
                "positions": sum(int((getattr(train.targets, v) != self.scen.items.num_items).sum())
                                 for v in cfg.view_weights()) / len(train)}

    def evaluation(self) -> dict:
        """One `Trainer.evaluate("test")` pass per target domain: every test case, both protocols."""
        seconds, gemms, cases = 0.0, [], 0
        reset_peak_memory(self.device)
        for target in ("X", "Y"):
            trainer = self.trainer(self.cfg.replace(target=target))
            rows = trainer.eval_batch()
            sync(self.device)
            t0 = time.perf_counter()
            trainer.evaluate("test")
            sync(self.device)
            seconds += time.perf_counter() - t0
            in_target = (self.scen.test.target >= self.scen.items.num_x) == (target == "Y")
            history, items = self.scen.test.history[in_target], softmax_sizes(trainer.model)
            cases += len(history.xy)
            for i in range(0, len(history.xy), rows):
                gemms += step_gemms(history[i:i + rows], None, items, trainer.cfg, self.widths, trainer.model.chunk(),
                                    self.device.type)
        return {"seconds": seconds, "cases": cases, "flop": flops(gemms), "peak_gb": peak_memory_gb(self.device),
                "mm_s": matmul_seconds(gemms, self.device, self.mm_cache)}


# ----------------------------------------------------------------------------- a simulated GPU

DISK = 2e9  # bytes/s at which checkpoints are written, for the projection (a local NVMe disk)
HOST_LINK = 25e9  # bytes/s of a device -> pinned host copy (PCIe 5 x16 moves up to 64; a conservative figure)


def simulated(gpu: simulate.GPU, cfg: Config, scen: Scenario) -> dict:
    """`Trainer.train_epoch` over SIM_STEPS batches, step by step, and one evaluation batch and pass
    (`evaluate.rank_batch` and `rank_cases`, as `Trainer.rank` runs them) of IFCDSR on a simulated GPU: their
    counts (`simulate.Counting.totals`) and the projection of 100 epochs."""
    out = {}
    with simulate.simulated_gpu(gpu) as counting, tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer("ifcdsr", cfg, scen, torch.device("cuda"), Path(tmp), resume=False)
        trainer.scen, B = replace(scen, train=head(scen.train, SIM_STEPS * cfg.batch_size)), cfg.batch_size
        trainer.model.train()
        trainer.step(*trainer.batch(torch.arange(B)))  # the first step also makes Adam's state and the score buffers
        counting.keep_on_chip(lambda: fused_loss._SCRATCH.values())
        out["epoch"] = epoch_steps(trainer, counting)
        out["train"] = out["epoch"][1]  # a step inside the epoch
        out["casts"] = out["train"]["casts"]
        trainer.scen = scen
        cases = eval_cases(scen.valid, scen, cfg.target)
        rows, neg = trainer.eval_batch(), negatives(cases, trainer.items, "valid", cfg.target)
        trainer.model.eval()
        with trainer.exact():
            resident = on_device(cases, trainer.items, neg, trainer.device, rows)
            score = trainer.model.scorer()
            counting.reset()
            counting.start_peak()
            rank_batch(score, cases, resident, trainer.items, slice(0, rows), scen.items.num_items)
            out["eval"] = counting.totals()
            counting.reset()
            rank_cases(score, cases, trainer.items, neg, trainer.device, rows, scen.items.num_items)
            out["pass"] = counting.totals()
        state = training_state(trainer)
        out["last_bytes"] = sum(simulate.nbytes(t) for t in tree_leaves(state) if isinstance(t, torch.Tensor))
        out["best_bytes"] = sum(simulate.nbytes(t) for t in tree_leaves(state["model"]) if isinstance(t, torch.Tensor))
    steps, batches = math.ceil(len(scen.train) / B), math.ceil(len(cases) / rows)
    for key, seconds in (("projected", "seconds"), ("fused", "fused_seconds")):
        checkpoints = out["last_bytes"] + out["best_bytes"]
        # no step waits for the device (`Trainer.train_epoch` reads the losses once, at the epoch's end), so the
        # host runs ahead and a step takes the larger of the two times; so does the pass, which ends in a sync
        step, evaluation = (max(out[k]["host_seconds"], out[k][seconds]) for k in ("train", "pass"))
        busy = steps * step + evaluation
        # the snapshot's copy to the host holds the device; the files are written while the next epoch trains
        epoch = busy + checkpoints / HOST_LINK + max(0.0, checkpoints / DISK - busy)
        out[key] = {"step_s": step, "epoch_s": epoch, "100_min": 100 * epoch / 60}
    out.update(steps=steps, batches=batches, cases=len(cases), rows=rows)
    return out


def epoch_steps(trainer: Trainer, counting: simulate.Counting) -> list[dict]:
    """The counts of each step of one `Trainer.train_epoch`: from one `Trainer.batch` call to the next, the last one
    to the end of the epoch (its mean losses read); each with the casts of an item matrix it made."""
    before = []  # what came before each batch: the epoch's start, then each step but the last

    def batch(idx):
        before.append({**counting.totals(), "casts": dict(counting.casts)})
        counting.reset()
        counting.start_peak()
        return Trainer.batch(trainer, idx)

    trainer.batch = batch
    with contextlib.redirect_stderr(io.StringIO()):  # the epoch's progress line
        trainer.train_epoch()
    del trainer.batch
    return before[1:] + [{**counting.totals(), "casts": dict(counting.casts)}]


def print_simulated(gpu: simulate.GPU, sim: dict, cfg: Config, scen: Scenario) -> None:
    tr, ev, ps = sim["train"], sim["eval"], sim["pass"]
    print(f"\nsimulated GPU, an estimate (fake tensors under CUDA autocast; a kernel's device time the larger of "
          f"bytes / bandwidth and FLOP / rate, plus its launch; its host time an eager op and a launch):\n  "
          f"{simulate.roofline_note(gpu)}; checkpoints copied to the host at {HOST_LINK / 1e9:.0f} GB/s, then written "
          f"at {DISK / 1e9:.0f} GB/s while the next epoch trains")
    print(f"  {'':<24}{'training step':>16}{'evaluation batch':>18}{'evaluation pass':>18}")
    rows = (("kernels", "kernels", "{:,}"), ("host syncs", "syncs", "{:,}"), ("product TFLOP", "flop", "{:.2f}"),
            ("bytes moved, GB", "bytes", "{:.1f}"), ("peak device memory, GB", "peak_bytes", "{:.1f}"),
            ("host time, ms", "host_seconds", "{:.2f}"), ("device time, ms", "seconds", "{:.2f}"))
    scale = {"flop": 1e-12, "bytes": 1e-9, "peak_bytes": 1e-9, "seconds": 1e3, "host_seconds": 1e3}
    for label, key, fmt in rows:
        cells = [fmt.format(t[key] * scale.get(key, 1)) for t in (tr, ev, ps)]
        print(f"  {label:<24}" + "".join(f"{c:>{w}}" for c, w in zip(cells, (16, 18, 18))))
    fewest = min(scen.items.num_x, scen.items.num_y)  # an item matrix has a row per item of a domain at least
    casts = {k: v for k, v in sim["casts"].items() if int(k[1:].split(",")[0]) >= fewest}
    print(f"  casts of an item matrix in a step: {sum(casts.values())} ({', '.join(casts) or 'none'})")
    print(f"Trainer.train_epoch over {len(sim['epoch'])} batches:")
    print(f"  {'step':>6}{'kernels':>9}{'host syncs':>12}{'host ms':>9}{'device ms':>11}")
    for i, step in enumerate(sim["epoch"], 1):
        print(f"  {i:>6}{step['kernels']:>9,}{step['syncs']:>12}{step['host_seconds'] * 1e3:>9.2f}"
              f"{step['seconds'] * 1e3:>11.2f}" + ("  (and the epoch's end: its mean losses read)" if
                                                    i == len(sim["epoch"]) else ""))
    print(f"syncs per step {tr['syncs']}")
    print(f"syncs per evaluation batch {ev['syncs']} (per pass {ps['syncs']}: the ranks and the finiteness verdicts)")
    print(f"bytes per step {tr['bytes'] / 1e9:.1f} GB")
    print(f"checkpoints: last_*.pt {sim['last_bytes'] / 1e9:.2f} GB each epoch, "
          f"best_*.pt {sim['best_bytes'] / 1e9:.2f} GB when validation improves")
    print(f"projected 100 epochs {sim['projected']['100_min']:.2f} min (target {cfg.target}: {sim['steps']} steps of "
          f"{sim['projected']['step_s'] * 1e3:.2f} ms, the larger of host and device, and {sim['cases']:,} validation "
          f"cases in {sim['batches']} batches of {sim['rows']} an epoch, {sim['projected']['epoch_s']:.1f} s an epoch)")
    print(f"a fused linear-softmax kernel (the logits never leave the chip): {tr['fused_bytes'] / 1e9:.1f} GB and "
          f"{tr['fused_seconds'] * 1e3:.2f} ms of device time a step; projected 100 epochs "
          f"{sim['fused']['100_min']:.2f} min")


# ----------------------------------------------------------------------------- the report


def run_simulated(gpu: simulate.GPU, cfg: Config, items: int, seqs: int) -> int:
    cfg = cfg.replace(use_image=True, multi_attention=True, target="X")  # IFCDSR at the paper's settings
    print(f"benchmark: IFCDSR, q = {cfg.q}, e = {E_WIDTH}, batch {cfg.batch_size}, L = {cfg.max_len}, "
          f"{cfg.n_blocks} blocks, softmax over {cfg.softmax_over} items; device: a simulated {gpu.name}", flush=True)
    scen = synthetic_scenario(items, seqs, cfg, E_WIDTH, cfg.seed)
    print(f"synthetic scenario: N = {scen.items.num_items:,} items ({scen.items.num_x:,} + {scen.items.num_y:,}), "
          f"{len(scen.train):,} training sequences, {len(scen.valid):,} validation cases", flush=True)
    print_simulated(gpu, simulated(gpu, cfg, scen), cfg, scen)
    return 0


def run(cfg: Config, device: torch.device, items: int, seqs: int) -> int:
    t_start = time.perf_counter()
    cfg = cfg.replace(use_image=True, multi_attention=True, target="X")  # IFCDSR at the paper's settings
    e = E_WIDTH
    threads = torch.get_num_threads() if device.type == "cpu" else None
    print(f"benchmark: IFCDSR, q = {cfg.q}, e = {e}, batch {cfg.batch_size}, L = {cfg.max_len}, dropout {cfg.dropout}, "
          f"{cfg.n_blocks} blocks, softmax over {cfg.softmax_over} items; device {device}"
          + (f" ({threads} threads)" if threads else
                                                      f" ({torch.cuda.get_device_name(device)}, bf16 autocast)"),
          flush=True)
    t0 = time.perf_counter()
    scen = synthetic_scenario(items, seqs, cfg, e, cfg.seed)
    print(f"synthetic scenario: N = {scen.items.num_items:,} items ({scen.items.num_x:,} + {scen.items.num_y:,}), "
          f"{len(scen.train):,} training sequences, {len(scen.test):,} test cases; built in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(scen, cfg, device, Path(tmp))
        tr = bench.train_steps(cfg.batch_size, STEPS, WARMUP)
        ev = bench.evaluation()
        print(f"\ntraining ({STEPS} steps after {WARMUP} warm-up, {tr['positions']:.1f} prediction positions "
              f"per sequence)")
        report("step", tr["step_s"], tr["flop"], tr["mm_s"])
        print(f"  sequences/s      {tr['seq_per_s']:.1f}")
        print(f"  peak memory      {tr['peak_gb']:.2f} GB ({'allocated' if device.type == 'cuda' else 'RSS'})")
        print(f"evaluation ({ev['cases']:,} test cases, both protocols, both target domains)")
        report("pass", ev["seconds"], ev["flop"], ev["mm_s"])
        print(f"  cases/s          {ev['cases'] / ev['seconds']:.1f}")
        print(f"  peak memory      {ev['peak_gb']:.2f} GB")

        steps_per_epoch = math.ceil(len(scen.train) / cfg.batch_size)
        valid_x = int((scen.valid.target < scen.items.num_x).sum())
        epoch_s = steps_per_epoch * tr["step_s"] + valid_x * ev["seconds"] / ev["cases"]
        print(f"projected 100 epochs (target X: {steps_per_epoch} steps and {valid_x:,} validation cases an "
              f"epoch): {100 * epoch_s / 3600:.1f} h; FLOP per epoch {steps_per_epoch * tr['flop']:.3g}")

        print("\nstep time against N (batch {}, {} steps after {} warm-up)".format(cfg.batch_size, 2, 1))
        print(f"  {'N':>8} {'step s':>8} {'GFLOP':>8} {'GFLOP/s':>8} {'ratio':>6}")
        for share in SCALE_ITEMS:
            n_items = round(share * items)
            if n_items == items:
                row = tr
            else:
                small = synthetic_scenario(n_items, 2 * cfg.batch_size, cfg, e, cfg.seed)
                row = Bench(small, cfg, device, Path(tmp)).train_steps(cfg.batch_size, 2, 1)
            print(f"  {n_items:>8,} {row['step_s']:>8.2f} {row['flop'] / 1e9:>8.0f} "
                  f"{row['flop'] / row['step_s'] / 1e9:>8.1f} {row['mm_s'] / row['step_s']:>6.2f}", flush=True)
        print(f"step time against the batch size (N = {scen.items.num_items:,}, 2 steps after 1 warm-up)")
        print(f"  {'batch':>8} {'step s':>8} {'GFLOP':>8} {'GFLOP/s':>8} {'ratio':>6} {'seq/s':>7}")
        for share in SCALE_BATCH:
            batch = max(1, round(share * cfg.batch_size))
            row = tr if batch == cfg.batch_size else bench.train_steps(batch, 2, 1)
            print(f"  {batch:>8} {row['step_s']:>8.2f} {row['flop'] / 1e9:>8.0f} "
                  f"{row['flop'] / row['step_s'] / 1e9:>8.1f} {row['mm_s'] / row['step_s']:>6.2f} "
                  f"{row['seq_per_s']:>7.1f}", flush=True)
    if device.type == "cuda":  # what the simulation estimates for the same sizes, beside what was measured
        print_simulated(simulate.H200, simulated(simulate.H200, cfg, scen), cfg, scen)
    print(f"\nbenchmark took {time.perf_counter() - t_start:.0f} s")
    return 0


def report(what: str, seconds: float, flop: float, mm_seconds: float) -> None:
    print(f"  {what} time        {seconds:.2f} s")
    print(f"  achieved         {flop / seconds / 1e9:.1f} GFLOP/s ({flop / 1e9:.0f} GFLOP of matmuls)")
    print(f"  fp32 matmul peak {flop / mm_seconds / 1e9:.1f} GFLOP/s (the same matmul shapes alone, this run)")
    print(f"  ratio            {mm_seconds / seconds:.2f}")
    print(f"  products         {mm_seconds:.2f} s (those shapes alone); everything else {seconds - mm_seconds:.2f} s")


# ----------------------------------------------------------------------------- CLIP

VIT_B_32 = clip_loader.CLIPConfig(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768,
                                  vision_patch_size=32, context_length=77, vocab_size=49408, transformer_width=512,
                                  transformer_layers=12)


def clip(*, images=2000, repeats=5, batch_sizes=(1, 16, 64), device="auto", workers=None):
    """images/s of encode_image (random ViT-B/32 weights; vs open_clip when installed) and of `embed`."""
    torch.manual_seed(0)
    model = clip_loader.CLIP(VIT_B_32).eval()
    try:  # optional comparison, not a project dependency
        import open_clip
        reference = open_clip.model.build_model_from_openai_state_dict(model.state_dict(), cast_dtype=None)
        reference.float().load_state_dict(model.state_dict())  # it rounded the weights to fp16: undo that
    except ImportError:
        reference = None
        print("open_clip is not installed: no comparison")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, best of {repeats} after a warm-up")
    for B in batch_sizes:
        x = torch.randn(B, 3, 224, 224)
        encoders = {"ours": model.encode_image, **({"open_clip": reference.encode_image} if reference else {})}
        best = dict.fromkeys(encoders, math.inf)
        with torch.inference_mode():
            for encode in encoders.values():  # warm-up
                encode(x)
            for turn in range(repeats):  # alternating, in turn first, so both see the same machine load
                for name in sorted(encoders, reverse=turn % 2 == 1):
                    start = time.perf_counter()
                    encoders[name](x)
                    best[name] = min(best[name], time.perf_counter() - start)
            line = f"encode_image batch {B:3d}: {B / best['ours']:6.1f} images/s"
            if reference:
                diff = (model.encode_image(x) - reference.encode_image(x)).abs().max().item()
                line += (f", open_clip {B / best['open_clip']:6.1f} images/s, "
                         f"ratio {best['open_clip'] / best['ours']:.2f} (max |difference| {diff:.1e})")
        print(line, flush=True)

    if not images:
        return
    with tempfile.TemporaryDirectory() as tmp:
        scenario = Path(tmp)
        (scenario / "images").mkdir()
        rng = np.random.default_rng(0)
        asins = [f"B{i:09d}" for i in range(images)]
        for asin in asins:  # smooth random colour fields with noise, roughly like product photos
            small = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((500, 500), Image.BICUBIC)
            noisy = np.asarray(small, dtype=np.int16) + rng.integers(-12, 13, (500, 500, 3))
            Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(scenario / "images" / f"{asin}.jpg", quality=90)
        half = images // 2
        for name, part in (("Alist.txt", asins[:half]), ("Blist.txt", asins[half:])):
            (scenario / name).write_text("".join(f"{i}\t{a}\t{i}\n" for i, a in enumerate(part)))
        torch.save(model.state_dict(), scenario / "weights.pt")
        start = time.perf_counter()
        embed.embed(scenario, scenario / "images", weights=scenario / "weights.pt", device=device,
                    workers=workers)
        seconds = time.perf_counter() - start
    print(f"embed command: {images:,} 500x500 JPEGs in {seconds:.1f} s = {images / seconds:.1f} images/s "
          f"(loading the weights included)")


# ----------------------------------------------------------------------------- command line


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Speed and memory of IFCDSR at Movie-Book size (default), or of CLIP.")
    p.add_argument("--items", type=bounded(int, 100, 10**7), default=100_782,
                   help="N of the synthetic scenario (Movie-Book: 100,782)")
    p.add_argument("--seqs", type=bounded(int, 40, 10**7), default=58_515,
                   help="training sequences (Movie-Book: 58,515), at least 3 batches")
    p.add_argument("--batch-size", type=bounded(int, *RANGES["batch_size"]), default=Config.batch_size,
                   help="mini-batch size")
    p.add_argument("--softmax-over", default=Config.softmax_over, choices=("domain", "all"),
                   help="the items of each view's softmax (Eq. 3/4): each view's own domain, or all N")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--simulate", nargs="?", const="h200", choices=sorted(simulate.GPUS),
                   help="count and estimate a training step and an evaluation on a simulated GPU (default h200)")
    p.add_argument("--clip", action="store_true", help="measure CLIP's encode_image and the embed command instead")
    p.add_argument("--images", type=bounded(int, 0, 10**6), default=2000,
                   help="--clip: JPEGs generated for embed (0: skip it)")
    p.add_argument("--repeats", type=bounded(int, 1, 100), default=5,
                   help="--clip: timed runs per batch size; the best counts")
    p.add_argument("--workers", type=bounded(int, 0, 64), help="--clip: image decoding processes of embed")
    try:
        args = p.parse_args(argv)
    except SystemExit as exit_:  # argparse has printed what is wrong (or the help)
        return exit_.code
    if args.simulate:
        return run_simulated(simulate.GPUS[args.simulate], Config(batch_size=args.batch_size,
                                                                  softmax_over=args.softmax_over),
                             items=args.items, seqs=args.seqs)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda: no CUDA device is available; use --device cpu.", file=sys.stderr)
        return 2
    if args.clip:
        clip(images=args.images, repeats=args.repeats, device=str(device), workers=args.workers)
        return 0
    if args.seqs < STEPS * args.batch_size:
        print(f"error: --seqs {args.seqs}: the {STEPS} timed steps need at least {STEPS} batches of --batch-size "
              f"{args.batch_size}, {STEPS * args.batch_size} sequences.", file=sys.stderr)
        return 2
    return run(Config(batch_size=args.batch_size, softmax_over=args.softmax_over), device, items=args.items,
               seqs=args.seqs)


if __name__ == "__main__":
    sys.exit(main())
