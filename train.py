"""Train and evaluate IFCDSR and the baselines: the loop, model selection on validation, seeds, the command line.

    python train.py                                  # the generated demo scenario, about 2 minutes on a CPU
    python train.py --scenario movie_book            # data/Movie-Book, both target domains (Table 3)
    python train.py --scenario movie_book --ablation # the three rows of Table 4
    python train.py --data-dir DIR --compare --seeds 3   # Tables 2/3 with the baselines, mean ± std, significance
    python train.py --set q=32 dropout=0.1            # any ifcdsr.Config field
    python train.py --eval-only RUN/ifcdsr/seed0/best_X.pt --export top.tsv   # each test user's top 10 items
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import itertools
import json
import math
import os
import pickle
import random
import re
import shlex
import signal
import struct
import sys
import threading
import time
import warnings
import zipfile
from dataclasses import asdict, fields
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils._pytree import tree_leaves, tree_map

import baselines
import report
from common import (Progress, atomic_write, atomic_write_all, atomic_write_text, bounded, duration, file_problem,
                    safe_output)
from data import (EMBEDDINGS_FILE, SPLIT_FILES, DataError, Scenario, Views, fetch_list, load_scenario, read_users,
                  resolve_scenario)
from evaluate import (NUM_NEGATIVES, PROTOCOLS, NonFiniteScores, by_target, target_items, eval_cases, metrics,
                      negatives, rank_cases, to_device, top_items, warm_items)
from ifcdsr import CPU_CHUNK, IFCDSR, PRINTED, RANGES, Config, ConfigError, host_to, shapes

SELECT = ("sampled999", "MRR")  # the validation number that selects epochs and hyper-parameters
DEMO_EPOCHS = 5  # the demo's default, so that `python train.py` ends within 3 minutes on 2 CPU cores
GRID = {"lr": [1e-3, 5e-4, 1e-4], "weight_decay": [1e-4, 5e-5, 1e-5]}  # paper §4's 3x3 grid: a bare --grid
NOT_GRIDDED = {  # Config fields that --grid refuses besides the per-training ones, and why
    "max_len": "the scenario's sequences are cut to max_len once a run; run one command per value "
               "(--set max_len=N)",
    "score_chunk": "it sets memory only: every value gives the same numbers; set it with --set score_chunk=N"}
VARIANTS = {  # IFCDSR's rows: (use_image, multi_attention)
    "original": (False, False),  # Table 4 row 1, original framework: ID only, one merged representation
    "image_fusion": (True, False),  # Table 4 row 2: + image fusion
    "ifcdsr_id": (False, True),  # --no-image: ID only, three views
    "ifcdsr": (True, True),  # IFCDSR; Table 4 row 3: + multiple attention
}
BASELINES = {"gru4rec": baselines.GRU4Rec, "sasrec": baselines.SASRec, "gru4rec_target": baselines.GRU4RecTarget,
             "sasrec_target": baselines.SASRecTarget}  # popularity needs no training
MODELS = tuple(report.LABELS)  # every row, in the order of the tables
COMPARE = ("popularity", "gru4rec", "sasrec", "ifcdsr_id", "ifcdsr")  # --compare: Tables 2/3's rows
CHECKPOINT = {"model_name", "model", "config", "scenario", "data_dir", "data_sha256", "images_sha256", "num_x",
              "num_y", "epoch", "best_valid"}  # what evaluation needs, in best_*.pt: tensors, numbers, strings, dicts
RESUME = {"optimizer", "bad", "history", "rng"}  # what a resume needs besides, in last_*.pt only
SCHEDULE = ("epochs", "patience", "eval_every")  # the settings a --resume may change: e.g. train a finished run longer
MAX_SEEDS = 1000
LOCK = ".lock"  # in every run folder: locked by the process that writes the folder, never read or written
TRAINING = ("epochs", "lr", "weight_decay", "batch_size", "patience", "eval_every", "seed", "seeds", "grid")
READINGS = ("temperature", "loss_norm", "softmax_over", "literal")  # IFCDSR's flags besides α, λ1, λ2
CONFLICTS = {  # pairs of flags refused together, and why
    ("scenario", "data_dir"): "--data-dir is the scenario folder itself",
    ("ablation", "no_image"): "--ablation trains Table 4's rows with and without images and views",
    ("ablation", "no_multi_attention"): "--ablation trains Table 4's rows with and without images and views",
    ("compare", "no_multi_attention"): "the IFCDSR rows without the three views are --models original,image_fusion",
    ("models", "no_multi_attention"): "the IFCDSR rows without the three views are --models original,image_fusion",
}


class UsageError(Exception):
    """A bad command line or checkpoint; the message says what to do."""


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def save(state: dict, path: Path) -> None:
    """A checkpoint, written whole or not at all."""
    def write(f):
        try:
            torch.save(state, f)
        except RuntimeError as err:  # torch's zip writer reports a failed write (a full disk) as a RuntimeError
            raise OSError(f"{path}: could not be written ({str(err).splitlines()[0][:200]}); is the disk full? "
                          f"The previous checkpoint is kept: free space and continue with --resume.") from None
    atomic_write(path, write)


def host_copy(state):
    """`state` with every tensor copied to host memory and every container rebuilt: what training changes
    afterwards (parameters, Adam's moments, the history list) no longer reaches it. A device's copies are
    queued in stream order without waiting, into page-locked memory; `done` is set once they have landed."""
    def copy(x):
        if not isinstance(x, torch.Tensor):
            return x
        if x.device.type == "cpu":
            return x.detach().clone()
        return torch.empty(x.shape, dtype=x.dtype, pin_memory=True).copy_(x.detach(), non_blocking=True)
    snapshot = tree_map(copy, state)
    done = torch.cuda.Event() if torch.cuda.is_available() and any(
        isinstance(t, torch.Tensor) and t.is_cuda for t in tree_leaves(state)) else None
    if done is not None:
        done.record()
    return snapshot, done


class Checkpoints:
    """Checkpoints written by a background thread while the next epoch trains: `write` snapshots the states
    (`host_copy`) and returns; the thread waits for the copies, then `save`s each file whole. One write is in
    flight at a time (the next waits for it), and `wait` returns once it is on disk, re-raising its error."""

    def __init__(self):
        self.thread, self.error = None, None

    def write(self, states: dict[Path, dict]) -> None:
        self.wait()
        snapshots = {path: host_copy(state) for path, state in states.items()}

        def work():
            try:
                for path, (snapshot, done) in snapshots.items():
                    if done is not None:
                        done.synchronize()
                    save(snapshot, path)
            except BaseException as err:  # raised in the training thread by the next write or wait
                self.error = err
        self.thread = threading.Thread(target=work, name="checkpoints")
        self.thread.start()

    def wait(self, raise_error: bool = True) -> None:
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        error, self.error = self.error, None
        if error is not None and raise_error:
            raise error


def save_run(out: Path, results: dict, ranks: dict, seeds: list) -> None:
    """results.json and test_ranks.npz of a complete run, both written whole before either replaces an earlier
    pair: a failed or interrupted run leaves the previous files as they were. Every test case's rank is stored
    under `<model>/<seed>/<domain>/<protocol>`, popularity's under seed None."""
    text = json.dumps(results, indent=1, allow_nan=False)  # strict JSON: a NaN or an infinity is an error
    arrays = {f"{m}/{seed}/{d}/{p}": r.numpy() for m, by_d in ranks.items() for d, by_p in by_d.items()
              for p, per_seed in by_p.items() for seed, r in zip([None] if m == "popularity" else seeds, per_seed)}
    atomic_write_all({out / "results.json": lambda f: f.write(text.encode("utf-8")),
                      out / "test_ranks.npz": lambda f: np.savez(f, **arrays)})


def eval_batch(chunk: int, N: int) -> int:
    """Cases scored at once in evaluation: (batch, N) scores within `chunk` (`IFCDSR.chunk()`), at most 1024."""
    return max(1, min(1024, chunk // N))


def needs_images(model: str) -> bool:
    return VARIANTS.get(model, (False,))[0]


def build_model(name: str, cfg: Config, scen: Scenario) -> torch.nn.Module:
    if name in BASELINES:
        return BASELINES[name](cfg, scen.items.num_x, scen.items.num_y)
    return IFCDSR(cfg, scen.items.num_x, scen.items.num_y, scen.E_img if cfg.use_image else None)


# ----------------------------------------------------------------------------- checkpoints


def load_checkpoint(path: Path) -> dict:
    """A checkpoint read as data (weights_only: tensors, numbers, strings, lists, dicts; nothing in the file
    is executed) onto the CPU, whatever device wrote it, with the keys every checkpoint of this version holds.
    `load_state_dict` then places each tensor where the model and the optimizer are."""
    check_checkpoint_file(path)
    refused = f"{path}: not an IFCDSR checkpoint ({{}}); nothing in it was run. Use a best_*.pt or last_*.pt " \
              f"that train.py wrote."
    try:  # torch.save writes a zip archive with the pickled state in <name>/data.pkl
        with zipfile.ZipFile(path) as archive:
            if not any(name.endswith("/data.pkl") for name in archive.namelist()):
                raise UsageError(refused.format("a zip archive without the data.pkl that torch.save writes"))
    except zipfile.BadZipFile:
        raise UsageError(refused.format("not the zip archive that torch.save writes: a foreign or truncated "
                                        "file")) from None
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before it refuses a foreign pickle
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UsageError(refused.format("UnpicklingError: its pickle asks for more than tensors, numbers, strings, "
                                        "lists and dicts")) from None
    except Exception as err:  # a damaged record inside a well-formed archive
        raise UsageError(refused.format(f"{type(err).__name__}: torch could not read its records")) from None
    if not isinstance(state, dict) or not CHECKPOINT <= state.keys():
        missing = sorted(CHECKPOINT - state.keys()) if isinstance(state, dict) else type(state).__name__
        raise UsageError(f"{path}: not an IFCDSR checkpoint of this version (missing {missing}); train again with "
                         f"the same command to re-create it.")
    known = {f.name for f in fields(Config)}
    extra = sorted(state["config"].keys() - known) if isinstance(state["config"], dict) else "?"
    if state["model_name"] not in MODELS or extra:
        raise UsageError(f"{path}: not an IFCDSR checkpoint of this version (model {state['model_name']!r}, config "
                         f"fields {extra} unknown); train again with the same command to re-create it.")
    return state


def load_weights(model: torch.nn.Module, state: dict, path: Path) -> None:
    """The checkpoint's weights into `model`, or a UsageError naming the file: a checkpoint of an earlier form
    of the same row (another shape, other parameters) does not fit."""
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise UsageError(f"{path}: its weights do not fit this model ({str(err).splitlines()[0]}); train again "
                         f"into another --out.") from None


def check_checkpoint_file(path: Path) -> None:
    """A checkpoint is read only if it is a regular file: a FIFO would block torch.load, /dev/zero fill memory."""
    problem = file_problem(path)
    if problem:
        raise UsageError(f"{path}: {problem}; expected a best_*.pt or last_*.pt file that train.py wrote.")


def check_checkpoint(state: dict, scen: Scenario, path: Path) -> None:
    """The checkpoint was trained on this scenario's data: the same files (and image embeddings, if it used them)."""
    data_differs = state["data_sha256"] != scen.data_sha256
    # the embeddings matter where this command reads them, for a checkpoint that uses them
    images_differ = scen.images_sha256 is not None and state["config"].get("use_image") and \
        state["images_sha256"] != scen.images_sha256
    if data_differs or images_differ:
        what = "item and sequence files" if data_differs else "image embeddings"
        raise UsageError(f"{path}: trained on other data: scenario {state['scenario']!r} in {state['data_dir']} "
                         f"({state['num_x']}+{state['num_y']} items), whose {what} differ from those of "
                         f"{scen.name} in {scen.path} ({scen.items.num_x}+{scen.items.num_y} items). Pass the data "
                         f"it was trained on (--data-dir {state['data_dir']}), or start a new run with another --out.")


def check_same_run(state: dict, name: str, cfg: Config, path: Path) -> None:
    """A --resume continues the same training: the same model and config, but for the schedule."""
    differs = sorted(k for k, v in asdict(cfg).items() if k not in SCHEDULE and state["config"].get(k) != v)
    if state["model_name"] != name or differs:
        raise UsageError(f"{path}: was written by {state['model_name']} with a different config "
                         f"({', '.join(differs) or 'model'}); resume with the same flags (only --epochs, "
                         f"--patience, --eval-every may change), or start a new run with another --out.")


# ----------------------------------------------------------------------------- training


class Trainer:
    """One model for one target domain and one seed: train with early stopping on validation, then test once."""

    def __init__(self, name: str, cfg: Config, scen: Scenario, device: torch.device, folder: Path, resume: bool):
        self.name, self.cfg, self.scen, self.device = name, cfg, scen, device
        self.last = folder / f"last_{cfg.target}.pt"
        self.best = folder / f"best_{cfg.target}.pt"
        set_seed(cfg.seed)  # the seed sets the initialisation and the order of the batches
        self.model = build_model(name, cfg, scen).to(device)
        # Note: the paper's "L2 regularization coefficient" is Adam's weight_decay (L2 added to the gradient), not
        # decoupled weight decay (AdamW); C2DSR, whose settings §4 adopts, applies none. On CUDA one fused kernel
        # updates all parameters (the same update)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                    fused=True if device.type == "cuda" else None)
        self.shuffle = torch.Generator().manual_seed(cfg.seed)
        self.epoch, self.best_valid, self.bad, self.history = 0, -1.0, 0, []
        self.items, self.cases, self.resident = target_items(scen, cfg.target), {}, None
        self.checkpoints = Checkpoints()
        if resume and self.last.is_file():
            self._restore(load_checkpoint(self.last))
        folder.mkdir(parents=True, exist_ok=True)

    def _state(self) -> dict:
        return {"model_name": self.name, "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "config": asdict(self.cfg), "scenario": self.scen.name, "data_dir": str(self.scen.path),
                "data_sha256": self.scen.data_sha256, "images_sha256": self.scen.images_sha256,
                "num_x": self.scen.items.num_x,
                "num_y": self.scen.items.num_y, "epoch": self.epoch, "best_valid": self.best_valid, "bad": self.bad,
                "history": self.history,
                "rng": {"torch": torch.get_rng_state(), "shuffle": self.shuffle.get_state(),
                        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}}

    def _restore(self, state: dict) -> None:
        check_checkpoint(state, self.scen, self.last)
        check_same_run(state, self.name, self.cfg, self.last)
        if not RESUME <= state.keys():
            raise UsageError(f"{self.last}: holds no training state (missing {sorted(RESUME - state.keys())}); "
                             f"resume needs the last_*.pt that train.py writes, or start a new run with another --out.")
        load_weights(self.model, state, self.last)  # E_img is not stored: it is the data's
        self.opt.load_state_dict(state["optimizer"])
        self.epoch, self.best_valid, self.bad, self.history = (
            state[k] for k in ("epoch", "best_valid", "bad", "history"))
        torch.set_rng_state(state["rng"]["torch"])
        self.shuffle.set_state(state["rng"]["shuffle"])
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        print(f"  resumed from {self.last} after epoch {self.epoch}", flush=True)

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    def chunk(self) -> int:
        """The (positions × items) logits computed at once: the model's `chunk()`, for every row."""
        model = self.model
        return model.chunk() if isinstance(model, IFCDSR) else self.cfg.score_chunk or CPU_CHUNK

    def eval_batch(self) -> int:
        return eval_batch(self.chunk(), self.scen.items.num_items)

    @contextlib.contextmanager
    def exact(self):
        """Evaluation's context: no gradients, and fp32 scores even where training runs under autocast."""
        with torch.autocast(self.device.type, enabled=False), torch.no_grad():
            yield

    def scorer(self):
        """`rank_cases`'s score function: the model's scores, its item matrices normalised once a pass."""
        score = self.model.score
        if isinstance(self.model, IFCDSR):  # the same item matrices for every batch
            score = partial(score, matrices=self.model.item_matrices())
        return lambda history, items, shape: score(history, items, shape=shape)

    def rank(self, split: str) -> dict:
        """{protocol: (S,) ranks} of the valid or test cases of this target domain, from fp32 scores on every
        device: bf16 would round the scores to about 1/32 of their spread and create ties."""
        if split not in self.cases:
            cases = eval_cases(getattr(self.scen, split), self.scen, self.cfg.target)
            self.cases[split] = cases, negatives(cases, self.items, split, self.cfg.target)
        cases, neg = self.cases[split]
        self.model.eval()
        try:
            with self.exact():
                return rank_cases(self.scorer(), cases, self.items, neg, self.device, self.eval_batch(),
                                  self.scen.items.num_items)
        except NonFiniteScores as err:
            raise UsageError(f"{self.name} (target {self.cfg.target}, seed {self.cfg.seed}) gave {err} of the "
                             f"{split} set after epoch {self.epoch}: its weights have diverged. {self.advice()}"
                             ) from None

    def advice(self) -> str:
        kept = f"the last good checkpoint, {self.last}, is kept" if self.last.is_file() else "no checkpoint was kept"
        return (f"Lower --lr (now {self.cfg.lr:g}), or check that the image embeddings ({EMBEDDINGS_FILE}) hold "
                f"values of a sensible size; {kept}.")

    def evaluate(self, split: str) -> dict:
        """Metrics of the valid or test cases of this target domain, under both protocols."""
        return metrics(self.rank(split))

    def batch(self, idx: torch.Tensor) -> tuple[Views, Views, dict]:
        """The training sequences `idx` (CPU) as the step reads them: inputs and next items on the device, and
        their `shapes`, read from the CPU copy. The training set moves to the device once per run."""
        data = self.scen.train
        inputs, targets = data.inputs[idx], data.targets[idx]
        shape = shapes(self.scen.items.num_items, inputs, targets, self.device)
        if self.device.type == "cpu":
            return inputs, targets, shape
        if self.resident is None or self.resident[0] is not data:
            self.resident = data, to_device(data.inputs, self.device), to_device(data.targets, self.device)
        at = host_to(self.device, idx)
        return self.resident[1][at], self.resident[2][at], shape

    def step(self, inputs: Views, targets: Views, shape: dict) -> torch.Tensor:
        """One training step: (Eq. 7) the loss, its gradient, Adam. -> (views,) the per-view losses, on the device;
        nothing here waits for the device."""
        with self.autocast():
            loss, parts = self.model.loss(inputs, targets, shape)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return torch.stack([torch.as_tensor(v, dtype=torch.float32, device=self.device) for v in parts.values()])

    def train_epoch(self) -> dict:
        """One pass over the training set. Each step's per-view losses are copied to the host without waiting and
        checked one step later: a NaN or infinity stops the run there, before anything is saved (the last good
        checkpoint stays as it was)."""
        self.model.train()
        data = self.scen.train
        views = [self.model.view] if self.name in BASELINES else list(self.cfg.view_weights())  # the loss's parts
        order = torch.randperm(len(data), generator=self.shuffle)
        n_batches = math.ceil(len(data) / self.cfg.batch_size)
        sums, pending = torch.zeros(len(views), device=self.device), None
        progress = Progress(f"    epoch {self.epoch + 1}", len(data), "sequences")
        for b in range(n_batches):
            parts = self.step(*self.batch(order[b * self.cfg.batch_size:(b + 1) * self.cfg.batch_size]))
            self.check_losses(pending, views, n_batches)
            pending = b, self.to_host(parts)
            sums += parts
            progress.update(min((b + 1) * self.cfg.batch_size, len(data)))
        self.check_losses(pending, views, n_batches)
        progress.close()
        return {"loss": dict(zip(views, (sums / n_batches).tolist())),
                "seq_per_s": len(data) / (time.monotonic() - progress.start)}

    def to_host(self, parts: torch.Tensor):
        """A host copy of `parts` that the host reads later: on CUDA through page-locked memory, with an event
        that says when the copy is done."""
        if self.device.type != "cuda":
            return parts, None
        host = torch.empty(parts.shape, pin_memory=True).copy_(parts, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return host, done

    def check_losses(self, pending, views: list[str], n_batches: int) -> None:
        if pending is None:
            return
        b, (host, done) = pending
        if done is not None:
            done.synchronize()  # the step before the one just queued: the device is still busy with that one
        bad = [v for v in host.tolist() if not math.isfinite(v)]
        if bad:
            raise UsageError(f"the loss became {bad[0]} at epoch {self.epoch + 1}, batch {b + 1} of {n_batches} "
                             f"of {self.name} (target {self.cfg.target}, seed {self.cfg.seed}). {self.advice()}")

    def fit(self, log_prefix: str = "") -> None:
        """Train until cfg.epochs or early stopping; the best checkpoint is the epoch of the best validation MRR.

        Note: the paper trains 100 epochs; here training also stops after `patience` evaluations without a
        better validation MRR, and the epoch with the best one is kept: model selection on validation only.
        """
        try:
            self.epochs(log_prefix, time.time())
        except BaseException:  # the file being written is finished (or left as it was) before the error goes on
            self.checkpoints.wait(raise_error=False)
            raise
        self.checkpoints.wait()  # both files on disk before anything reads them

    def epochs(self, log_prefix: str, t0: float) -> None:
        """`fit`'s loop: an epoch, its validation, its checkpoints and its log line, until the schedule ends."""
        cfg = self.cfg
        while self.epoch < cfg.epochs and self.bad < cfg.patience:
            row, writes = self.train_epoch(), {}
            self.epoch += 1
            row["epoch"] = self.epoch
            if self.epoch % cfg.eval_every == 0 or self.epoch == cfg.epochs:
                row["valid"] = self.evaluate("valid")
                valid_mrr = row["valid"][SELECT[0]][SELECT[1]]
                if valid_mrr > self.best_valid:
                    self.best_valid, self.bad = valid_mrr, 0
                    state = self._state()
                    writes[self.best] = {**{k: state[k] for k in CHECKPOINT}, "valid": row["valid"]}
                else:
                    self.bad += 1
            self.history.append(row)
            writes[self.last] = self._state()
            self.checkpoints.write(writes)  # written while the next epoch trains
            losses = " ".join(f"L^{ {'x': 'X', 'y': 'Y', 'xy': 'X+Y'}[k]} {v:.4f}" for k, v in row["loss"].items())
            valid = (f" | valid MRR {row['valid']['sampled999']['MRR']:.2f} NDCG@10 "
                     f"{row['valid']['sampled999']['NDCG@10']:.2f}") if "valid" in row else ""
            print(f"{log_prefix}epoch {self.epoch:3d} | {losses}{valid} | {row['seq_per_s']:.0f} seq/s | "
                  f"{time.strftime('%H:%M:%S', time.gmtime(time.time() - t0))}", flush=True)

    def load_best(self) -> dict:
        state = load_checkpoint(self.best)
        self.model.load_state_dict(state["model"])
        return state


# ----------------------------------------------------------------------------- runs


class RunProgress:
    """The run's trainings, one per model (popularity needs none), seed, target domain and grid point: their
    count and the CPU threads in the header, then `training i of n` and, once one has finished, the run's ETA
    from the trainings of this command so far."""

    def __init__(self, models: list[str], seeds: list[int], targets: tuple, grid: dict):
        points = {m: len(grid_points(m, grid)) for m in models if m != "popularity"}
        self.n, self.i, self.t0 = sum(points.values()) * len(seeds) * len(targets), 0, 0.0
        each = "; grid points: " + ", ".join(f"{m} {n}" for m, n in points.items()) if grid else ""
        print(f"trainings: {self.n} ({len(points)} model(s) x {len(seeds)} seed(s) x {len(targets)} target(s)"
              f"{each}); {torch.get_num_threads()} CPU threads (OMP_NUM_THREADS sets them)", flush=True)

    def start(self, prefix: str) -> None:
        self.i += 1
        now = time.monotonic()
        self.t0 = self.t0 or now
        per = (now - self.t0) / (self.i - 1) if self.i > 1 else None
        eta = f"; run ETA {duration(per * (self.n - self.i + 1))} ({duration(per)} a training)" if per else ""
        print(f"\n{prefix}training {self.i} of {self.n}{eta}", flush=True)


def train_target(name: str, cfg: Config, scen: Scenario, device, folder: Path, grid: dict, resume: bool,
                 progress: RunProgress, label: str) -> dict:
    """Train at each of the row's grid points (once without --grid), keep the point with the best validation
    MRR, then rank the test set once, with that point's best checkpoint."""
    points, best = [], None
    for point, point_cfg, sub in trainings(name, cfg, folder, grid):
        trainer = train_point(name, point_cfg, scen, device, sub, resume, progress,
                              f"[{label} {report.point_name(point)}] " if point else f"[{label}] ")
        points.append({"values": point, "valid_" + "_".join(SELECT): trainer.best_valid, "folder": str(sub)})
        # Note: a tie on validation keeps the first of the tied points, in the grid's order (the order of
        # --grid's fields and values)
        if best is None or trainer.best_valid > best[1].best_valid:
            best = point, trainer
    chosen, trainer = best
    state = trainer.load_best()
    ranks = trainer.rank("test")  # the only time the test set is read
    result = {"config": state["config"], "best_epoch": state["epoch"], "checkpoint": str(trainer.best),
              "history": trainer.history, "valid": state["valid"], "test": metrics(ranks), "ranks": ranks,
              "cases": trainer.cases["test"][0]}
    if grid:
        result["grid"], result["chosen"] = points, chosen
    return result


def train_point(name: str, cfg: Config, scen: Scenario, device, folder: Path, resume: bool, progress: RunProgress,
                prefix: str) -> Trainer:
    """One training (a grid point's, or the row's): continued from its last checkpoint with --resume."""
    progress.start(prefix)
    trainer = Trainer(name, cfg, scen, device, folder, resume)
    trainer.fit(prefix)
    return trainer


def grid_points(name: str, grid: dict) -> list[dict]:
    """The distinct points at which row `name` trains: the product of the lists of the --grid fields that act
    on it, in the order given; one empty point without --grid, or where no field of it acts on the row."""
    lists = {k: v for k, v in grid.items() if rows_of(k, [name])}
    return [dict(zip(lists, values)) for values in itertools.product(*lists.values())]


def trainings(name: str, cfg: Config, folder: Path, grid: dict) -> list[tuple[dict, Config, Path]]:
    """The trainings of one row, target and seed: (point, config, folder) of each of its grid points, the folder
    named after the point's values (`lr=0.001,weight_decay=0.0001`); without one, the row's own."""
    return [(point, cfg.replace(**point), folder / report.point_name(point)) if point else (point, cfg, folder)
            for point in grid_points(name, grid)]


def model_config(model: str, cfg: Config, target: str, seed: int) -> Config:
    use_image, multi = VARIANTS.get(model, (False, True))
    return cfg.replace(use_image=use_image, multi_attention=multi, target=target, seed=seed)


def popularity(scen: Scenario, target: str, cfg: Config) -> dict:
    """The popularity row: every case ranks the target domain's items by their training interaction counts."""
    scores, items = baselines.popularity_scores(scen), target_items(scen, target)

    def rank(split: str):
        cases = eval_cases(getattr(scen, split), scen, target)
        return cases, rank_cases(lambda h, items, shape: scores[items].expand(h.xy.shape[0], -1), cases, items,
                                 negatives(cases, items, split, target), "cpu",
                                 eval_batch(cfg.score_chunk or CPU_CHUNK, scen.items.num_items))

    (_, valid), (cases, ranks) = rank("valid"), rank("test")
    return {"valid": metrics(valid), "test": metrics(ranks), "ranks": ranks, "cases": cases}


def parse_seeds(args) -> list[int]:
    """--seeds K (0..K-1) or a list a,b,c; --seed S alone is one seed; the default is seed 0."""
    if args.seeds is None:
        return [0 if args.seed is None else args.seed]
    if args.seed is not None:
        raise UsageError("give either --seed S or --seeds K|a,b,c, not both.")
    low, high = RANGES["seed"]
    expected = (f"expected a count K in [1, {MAX_SEEDS}] (seeds 0..K-1) or a list of at most {MAX_SEEDS} distinct "
                f"seeds in [{low}, {high:,}], like 0,3,7")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--seeds {args.seeds!r}: {expected}.") from None
    if "," not in args.seeds:
        seeds = list(range(seeds[0])) if len(seeds) == 1 and 1 <= seeds[0] <= MAX_SEEDS else []
    if not 1 <= len(seeds) <= MAX_SEEDS or not low <= min(seeds) <= max(seeds) <= high or len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds {args.seeds!r}: {expected}.")
    return seeds


def choose_models(args, name: str, has_images: bool) -> list[str]:
    """The rows to run, in the tables' order."""
    no_images = args.no_image or not has_images
    why = "--no-image" if args.no_image else f"the scenario has no {EMBEDDINGS_FILE}"
    if sum(map(bool, (args.models, args.compare, args.ablation))) > 1:
        raise UsageError("give one of --models, --compare and --ablation.")
    if args.models is not None or args.compare:
        models = COMPARE if args.compare else [m.strip() for m in args.models.split(",") if m.strip()]
        unknown = [m for m in models if m not in MODELS]
        if unknown or not models:
            raise UsageError(f"--models {args.models!r}: " + (f"unknown model(s) {unknown}" if unknown else
                             "names no model") + f"; expected a comma-separated list of {', '.join(MODELS)}.")
        if no_images and args.compare:
            if any(map(needs_images, models)):
                print(f"{why}: running only the rows that need no image embeddings", flush=True)
            models = [m for m in models if not needs_images(m)]
        elif no_images and any(map(needs_images, models)):
            raise UsageError(f"--models {','.join(m for m in models if needs_images(m))} need(s) image embeddings, "
                             f"but {why}. Build them (embed.py) or leave those rows out."
                             + fetch_list(name))
    elif args.ablation:
        # Note: Table 4's rows read as: "original framework" = ID only and the merged view S^{X+Y} alone;
        # "+ image fusion" adds the image branch; "+ multiple attention" (the three views) is IFCDSR
        models = ["popularity", "original", "image_fusion", "ifcdsr"]
    elif args.no_image or args.no_multi_attention:
        models = ["popularity", {(True, False): "ifcdsr_id", (False, True): "image_fusion",
                                 (True, True): "original"}[(args.no_image, args.no_multi_attention)]]
    else:
        # on the demo, the default run also trains the ID-only model, to show what the images add
        models = ["popularity", "ifcdsr_id", "ifcdsr"] if name == "demo" else ["popularity", "ifcdsr"]
    return [m for m in MODELS if m in models]


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_flags(args) -> None:
    """Before any work: flags that cannot both act are refused, naming both."""
    if args.eval_only:
        dropped = [flag(k) for k in args.given
                   if k not in ("eval_only", "scenario", "data_dir", "device", "deterministic", "export", "k")]
        if dropped:
            raise UsageError(f"--eval-only evaluates the checkpoint as it was trained (its model, target, config "
                             f"and folder) and writes nothing but --export's file; drop {', '.join(dropped)}.")
    for (a, b), why in CONFLICTS.items():
        if a in args.given and b in args.given:
            raise UsageError(f"{flag(a)} and {flag(b)} cannot both act: {why}; drop one of them.")


def acts_on(models: list[str]) -> dict[str, list[str]]:
    """The rows of `models` that each flag acts on: --alpha on a row with images, λ1 and λ2 on one with the three
    views, the readings on an IFCDSR row, the training flags on a trained row. A Config field not named here
    (lr, q, dropout, ...) acts on every trained row (`rows_of`)."""
    trained = [m for m in models if m != "popularity"]
    ifcdsr = [m for m in trained if m in VARIANTS]
    return {"alpha": [m for m in ifcdsr if VARIANTS[m][0]], "lambda1": [m for m in ifcdsr if VARIANTS[m][1]],
            "lambda2": [m for m in ifcdsr if VARIANTS[m][1]], **dict.fromkeys(READINGS, ifcdsr),
            **dict.fromkeys(TRAINING, trained)}


def rows_of(field: str, models: list[str]) -> list[str]:
    """The rows of `models` that a Config field (a --grid field) acts on."""
    return acts_on(models).get(field, [m for m in models if m != "popularity"])


def check_used(args, models: list[str], grid: dict) -> None:
    """Every flag given, and every field of --grid, acts on at least one of the rows run (`acts_on`)."""
    idle = [flag(k) for k, rows in acts_on(models).items() if k in args.given and not rows]
    idle += [f"--grid {k}" for k in grid if not rows_of(k, models) and "--grid" not in idle]
    if idle:
        chosen = next((flag(k) for k in ("models", "compare", "ablation", "no_image", "no_multi_attention")
                       if k in args.given), "the default rows")
        one = len(idle) == 1
        raise UsageError(f"{', '.join(idle)}: act{'s' if one else ''} on none of the rows of {chosen} "
                         f"({', '.join(models)}); drop {'it' if one else 'them'}, or choose rows "
                         f"{'it acts' if one else 'they act'} on with --models.")


def run(args) -> int:
    check_flags(args)
    cfg = make_config(args)
    grid = parse_grid(args, cfg)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available; use --device cpu.")
    if args.deterministic:  # cuBLAS needs its workspace fixed before its first call to be deterministic
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    if args.eval_only:
        return eval_only(args, device)
    seeds = parse_seeds(args)
    name, folder = resolve_scenario(args.scenario, args.data_dir)
    models = choose_models(args, name, (folder / EMBEDDINGS_FILE).exists())
    check_used(args, models, grid)
    out = args.run_folder = output_folder(args, name)  # the folder the Ctrl-C message names
    scen = load_scenario(folder, max_len=cfg.max_len, name=name, use_images=any(map(needs_images, models)))
    targets = ("X", "Y") if args.target == "both" else (args.target,)
    check_cases(scen, targets)
    lock = lock_run_folder(out, args.resume)  # held until run() ends (its file closes then, or when the process does)
    if args.resume:  # everything that can refuse a --resume, before anything is written
        check_run_folder(out, scen, {
            sub / f"last_{target}.pt": (model, point_cfg) for model in models if model != "popularity"
            for seed in seeds for target in targets
            for _, point_cfg, sub in trainings(model, model_config(model, cfg, target, seed),
                                               out / model / f"seed{seed}", grid)})
    print(f"scenario {name} ({folder}): |X| = {scen.items.num_x}, |Y| = {scen.items.num_y}, "
          f"{len(scen.train)} train / {len(scen.valid)} valid / {len(scen.test)} test sequences; "
          f"device {device}; models {', '.join(models)}; seeds {', '.join(map(str, seeds))}; output {out}\n"
          f"readings: {readings(cfg)}" + (f"; --grid {report.grid_text(grid)}, chosen per row on validation"
                                          if grid else ""), flush=True)
    print("".join(f"warning: {note}\n" for note in data_warnings(scen, targets)), end="", flush=True)
    progress = RunProgress(models, seeds, targets, grid)

    warm = warm_items(scen)
    results = {"scenario": name, "data_dir": str(folder), "data_sha256": scen.data_sha256, "config": asdict(cfg),
               "literal": args.literal, "deterministic": args.deterministic, "models": models, "seeds": seeds,
               **({"grid": grid} if grid else {}), "runs": {}}
    ranks = {}  # {model: {domain: {protocol: [(S,) ranks per seed]}}}
    for model in models:
        results["runs"][model] = []
        for seed in ([None] if model == "popularity" else seeds):
            entry = {"seed": seed}
            for target in targets:
                if model == "popularity":
                    res = popularity(scen, target, cfg)
                else:
                    res = train_target(model, model_config(model, cfg, target, seed), scen, device,
                                       out / model / f"seed{seed}", grid, args.resume, progress,
                                       f"{model} seed {seed} {target}")
                for key, value in res.items():
                    if key == "ranks":
                        for p, r in value.items():
                            ranks.setdefault(model, {}).setdefault(target, {}).setdefault(p, []).append(r)
                    elif key != "cases":
                        entry.setdefault(key, {})[target] = value
                entry.setdefault("test_by_target", {})
                for kind, part in by_target(res["ranks"], res["cases"], warm).items():
                    entry["test_by_target"].setdefault(kind, {})[target] = part
            results["runs"][model].append(entry)

    results["summary"] = {m: {k: report.aggregate([e[k] for e in runs]) for k in ("valid", "test", "test_by_target")}
                          for m, runs in results["runs"].items()}
    reference = next((m for m in ("ifcdsr", "ifcdsr_id") if m in models), None)
    sig = report.significance(ranks, reference) if reference else {}
    results["significance"] = {"reference": reference, "rows": sig}
    save_run(out, results, ranks, seeds)
    lock.close()

    report.print_run(results)  # the same as `python report.py RUN`
    print(f"\nresults: {out / 'results.json'}")
    return 0


# ----------------------------------------------------------------------------- command line


def parse_args(argv):
    p = argparse.ArgumentParser(description="Train and evaluate IFCDSR and the baselines (README has the details).")
    p.add_argument("--scenario", help="demo (default), food_kitchen or movie_book")
    p.add_argument("--data-dir", help="any C2DSR-format scenario folder (overrides --scenario)")
    p.add_argument("--target", default="both", choices=("X", "Y", "both"), help="target domain of Eq. 7-9")
    p.add_argument("--models", help=f"rows to run, comma-separated: {', '.join(MODELS)}")
    p.add_argument("--compare", action="store_true", help=f"the rows of Tables 2/3: {','.join(COMPARE)}")
    p.add_argument("--seeds", help="K seeds (0..K-1) or a list a,b,c; every model is trained once per seed")
    p.add_argument("--no-image", action="store_true", help="ID branch only (α = 1)")
    p.add_argument("--no-multi-attention", action="store_true", help="only the merged view S^{X+Y}")
    p.add_argument("--ablation", action="store_true", help="train the three rows of Table 4")
    p.add_argument("--grid", nargs="*", metavar="FIELD=V1,V2",
                   help="train every row at each point of these Config fields' values and keep, per row and seed, "
                        "the best on validation; bare: the paper's lr x L2 grid")
    for flag, kind, what in (("--epochs", int, "epochs"), ("--lr", float, "learning rate"),
                             ("--weight-decay", float, "L2 coefficient"), ("--alpha", float, "α (Eq. 5)"),
                             ("--lambda1", float, "λ1 (Eq. 7/8)"), ("--lambda2", float, "λ2 (Eq. 7/8)"),
                             ("--temperature", float, "τ dividing Eq. 2; 1 = as printed"),
                             ("--batch-size", int, "mini-batch size"), ("--patience", int, "early stopping"),
                             ("--eval-every", int, "validate every N epochs"),
                             ("--seed", int, "one training seed (initialisation and batch order)")):
        p.add_argument(flag, type=bounded(kind, *RANGES[flag[2:].replace("-", "_")]),
                       help=f"{what} (default: see ifcdsr.Config)")
    p.add_argument("--loss-norm", choices=("mean", "sum"), help="Eq. 6/7: each view's mean, or the sum as printed")
    p.add_argument("--softmax-over", choices=("all", "domain"),
                   help="Eq. 3/4: all N items, or each view's own domain as printed")
    p.add_argument("--literal", action="store_true",
                   help=f"pin the equations as printed ({', '.join(f'{k} {v}' for k, v in PRINTED.items())}) whatever "
                        f"the defaults, refuse a reading flag that differs, and record it in results.json")
    p.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                   help="any ifcdsr.Config field, e.g. --set q=32 dropout=0.1 (the flags above are shortcuts)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic kernels only: a seeded CUDA run and its resume agree bit for bit (slower)")
    p.add_argument("--out", help="output folder (default runs/<scenario>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out (or the latest)")
    p.add_argument("--eval-only", metavar="CKPT", help="evaluate a best_*.pt checkpoint on valid and test")
    p.add_argument("--export", metavar="FILE", help="with --eval-only: each test case's top-k items, as TSV")
    p.add_argument("--k", type=bounded(int, 1, 10_000), help="--export's k (default 10)")
    args = p.parse_args(argv)
    if args.export and not args.eval_only or args.k and not args.export:
        p.error("--export FILE needs --eval-only CKPT" if args.export else "--k needs --export FILE")
    if args.export and (Path(args.export).exists() or not Path(args.export).parent.is_dir()):
        p.error(f"--export {args.export}: {'already exists' if Path(args.export).exists() else 'no such folder'}; "
                f"choose another file")
    absent = object()
    p.set_defaults(**dict.fromkeys(vars(args), absent))  # parsed again, every flag not given is `absent`
    args.given = [k for k, v in vars(p.parse_args(argv)).items() if v is not absent]
    return args


def make_config(args) -> Config:
    sets = parse_sets(args.set)
    if args.epochs is None and "epochs" not in sets and args.data_dir is None and args.scenario in (None, "demo") \
            and not args.eval_only:
        args.epochs = DEMO_EPOCHS
    overrides = {k: getattr(args, k) for k in ("epochs", "lr", "weight_decay", "alpha", "lambda1", "lambda2",
                                               "temperature", "batch_size", "patience", "eval_every", "loss_norm",
                                               "softmax_over")
                 if getattr(args, k) is not None}
    differ = sorted(k for k in sets.keys() & overrides.keys() if sets[k] != overrides[k])
    if differ:
        raise UsageError(f"--set {differ[0]}={sets[differ[0]]} and --{differ[0].replace('_', '-')} "
                         f"{overrides[differ[0]]} disagree; give the value once.")
    overrides.update(sets)
    if args.literal:
        both = sorted(f"--set {k}" if k in sets else f"--{k.replace('_', '-')}"
                      for k in PRINTED.keys() & overrides.keys())
        if both:
            raise UsageError(f"--literal sets {', '.join(PRINTED)} as printed; drop {' and '.join(both)} or --literal.")
        overrides.update(PRINTED)
    try:
        return Config().replace(**overrides)  # the flags' types have checked their values against Config's RANGES
    except ConfigError as err:  # a --set value outside its range, or n_heads that does not divide q
        raise UsageError(f"--set: {err}.") from None


PER_TRAINING = {"target": "--target", "seed": "--seed or --seeds", "use_image": "--no-image or --models",
                "multi_attention": "--no-multi-attention or --models"}  # Config fields that each training sets


def parse_sets(pairs: list[str]) -> dict:
    """--set FIELD=VALUE ... -> {field: value}, each value read as the type of the field's default (a bool
    as true or false); the ranges are Config.check's."""
    sets = {}
    for pair in pairs:
        field, value = parse_value(pair, "--set")
        if field in sets and sets[field] != value:
            raise UsageError(f"--set gives {field} twice ({sets[field]} and {value}); give it once.")
        sets[field] = value
    return sets


def parse_value(pair: str, option: str) -> tuple[str, object]:
    """FIELD=VALUE of `option` (--set or --grid) -> (field, value), the value read as the type of the field's
    default (a bool as true or false); a field that each training sets is refused."""
    defaults = asdict(Config())
    field, eq, text = pair.partition("=")
    if field not in defaults or not eq:
        what = "expected FIELD=VALUE" if not eq else f"ifcdsr.Config has no field {field!r}"
        raise UsageError(f"{option} {pair}: {what}; the fields are {', '.join(defaults)}.")
    if field in PER_TRAINING:
        raise UsageError(f"{option} {pair}: {field} is decided for each training; use {PER_TRAINING[field]}.")
    kind = type(defaults[field])
    try:
        return field, {"true": True, "false": False}[text] if kind is bool else kind(text)
    except (KeyError, ValueError):
        expected = {bool: "true or false", int: "an integer", float: "a number"}.get(kind, "text")
        raise UsageError(f"{option} {pair}: {field} takes {expected} (default {defaults[field]}), "
                         f"found {text!r}.") from None


def parse_grid(args, cfg: Config) -> dict[str, list]:
    """--grid FIELD=V1,V2,... -> {field: [values]} in the order given ({} without --grid; a bare --grid is
    GRID, the paper's lr x L2 grid). Each value is typed as --set types it; every point of the grid (the
    product of the lists) is checked against Config's ranges on top of `cfg`. A field that the grid searches
    may not also be given by its flag, by --set or by --literal."""
    if args.grid is None:
        return {}
    grid, sets = {}, parse_sets(args.set)
    for pair in args.grid:
        field, eq, text = pair.partition("=")
        if not eq or not text or field in grid:
            what = f"gives {field} twice" if field in grid else "gives no value"
            raise UsageError(f"--grid {pair}: {what}; expected FIELD=V1,V2,... (one list per field), like "
                             f"--grid temperature=1,0.1.")
        values = [parse_value(f"{field}={v}", "--grid")[1] for v in text.split(",")]
        repeated = [v for i, v in enumerate(values) if v in values[:i]]
        if field in NOT_GRIDDED or repeated:
            why = f"{field} cannot be searched: {NOT_GRIDDED[field]}" if field in NOT_GRIDDED else \
                f"lists {repeated[0]} twice; give each value once"
            raise UsageError(f"--grid {pair}: {why}.")
        grid[field] = values
    grid = grid or GRID
    for field, values in grid.items():
        why = "--grid searches lr and L2 itself (paper §4's 3x3 grid)" if not args.grid else \
            f"--grid searches {field} itself ({report.grid_text({field: values})})"
        given = [flag(field)] * (field in args.given) + [f"--set {field}"] * (field in sets) + \
            ["--literal"] * (args.literal and field in PRINTED)
        if given:
            raise UsageError(f"--grid and {given[0]} cannot both act: {why}; drop one of them.")
    for point in itertools.product(*grid.values()):
        try:
            cfg.replace(**dict(zip(grid, point)))
        except ConfigError as err:  # a value outside its range, or n_heads that does not divide q
            raise UsageError(f"--grid: at {report.point_name(dict(zip(grid, point)))}: {err}.") from None
    return grid


def readings(cfg: Config) -> str:
    """The open readings of a config, in one line for the run header."""
    printed = all(getattr(cfg, k) == v for k, v in PRINTED.items())
    return (f"τ = {cfg.temperature:g}, loss {cfg.loss_norm}, softmax over {cfg.softmax_over} items"
            + (" (the equations as printed)" if printed else " (not as printed; --literal pins the printed forms)"))


def output_folder(args, name: str) -> Path:
    if args.out is None and args.resume:  # runs/<name>-YYYYmmdd-HHMMSS of exactly this scenario name
        stamped = re.compile(re.escape(name) + r"-\d{8}-\d{6}")
        found = sorted(p for p in Path("runs").glob(f"{name}-*") if stamped.fullmatch(p.name))
        if not found:
            raise UsageError(f"--resume: no earlier run of {name} under runs/; pass --out DIR.")
        return found[-1]
    out = Path(args.out or f"runs/{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    if out.is_symlink() and not out.exists():
        raise UsageError(f"--out {out}: a symlink to {os.readlink(out)}, which does not exist; choose another --out.")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: is a file, not a folder; choose another --out.")
    if not args.resume and holds_a_run(out):
        raise UsageError(f"{out} already holds a run; pass --resume to continue it, or another --out.")
    return out


def holds_a_run(out: Path) -> bool:
    return out.is_dir() and any(p.name != LOCK for p in out.iterdir())


def lock_run_folder(out: Path, resume: bool):
    """An exclusive lock on the run folder `out` (created if need be), held by the returned open file: a second
    train.py into the same folder is refused at once, naming the holder. The kernel drops the lock when the
    holder ends, however it ends, so the lock of a killed run never blocks. Without --resume the folder must
    still hold nothing but the lock file: another run may have filled it since `output_folder` looked."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK
    problem = "a symlink" if path.is_symlink() else path.exists() and file_problem(path)
    if problem:  # opening a FIFO to write would block; a symlink could point anywhere
        raise UsageError(f"{path}: {problem}, not the run's lock file; delete it and run again.")
    lock = open(path, "ab")  # created once, never written: a finished run's files stay as they were
    try:
        fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        query = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)  # struct flock: type, whence, start,
        pid = struct.unpack("hhqqi4x", fcntl.fcntl(lock, fcntl.F_GETLK, query))[4]  # length, pid of the holder
        lock.close()
        raise UsageError(f"{out}: another train.py (process {pid}) is writing this run folder; wait until it ends "
                         f"(or stop it), or choose another --out.") from None
    if not resume and holds_a_run(out):
        lock.close()
        raise UsageError(f"{out} already holds a run; pass --resume to continue it, or another --out.")
    return lock


def check_run_folder(out: Path, scen: Scenario, planned: dict[Path, tuple[str, Config]]) -> None:
    """Before --resume writes anything: the run folder's results and every checkpoint in it belong to this
    scenario's data, and the checkpoints that this command continues (`planned`: path -> model, config) were
    written by the same model and config."""
    results = out / "results.json"
    if results.is_file():
        try:
            recorded = json.loads(results.read_text())
            recorded = {k: str(recorded[k]) for k in ("scenario", "data_dir", "data_sha256")}
        except (ValueError, UnicodeDecodeError, TypeError, KeyError):
            recorded = None  # unreadable: the resumed run rewrites it, and the checkpoints are checked below
        if recorded and recorded["data_sha256"] != scen.data_sha256:
            raise UsageError(f"{results}: a run trained on other data: scenario {recorded['scenario']!r} in "
                             f"{recorded['data_dir']}, whose item and sequence files differ from those of {scen.name} "
                             f"in {scen.path}. Resume it with --data-dir {recorded['data_dir']}, or start a new run "
                             f"with another --out.")
    for last in planned if results.exists() else []:  # a finished run: every planned training has its last_*.pt
        best = last.with_name(last.name.replace("last_", "best_"))
        if not last.exists() and not last.is_symlink() and (best.exists() or best.is_symlink()):
            raise UsageError(f"{last}: missing from this finished run, though {best} is there: training could "
                             f"continue neither from it (no optimiser state) nor anew (that would replace it). Put it "
                             f"back, or delete {last.parent} to train this model again.")
    for path in sorted(out.rglob("*.pt")) if out.is_dir() else []:
        state = load_checkpoint(path)
        check_checkpoint(state, scen, path)
        if path in planned:
            check_same_run(state, *planned[path], path)
            best = path.with_name(path.name.replace("last_", "best_"))
            if state["best_valid"] >= 0 and not best.exists() and not best.is_symlink():
                raise UsageError(f"{best}: missing, though {path} records the validation MRR of its best epoch "
                                 f"({state['best_valid']:.2f}). Put it back, or delete {path.parent} to train "
                                 f"this model again.")


def check_cases(scen: Scenario, targets) -> None:
    """Every target domain has validation and test cases (a ground truth in that domain)."""
    for target in targets:
        for split in ("valid", "test"):
            if len(eval_cases(getattr(scen, split), scen, target)) == 0:
                raise DataError(f"{scen.path / SPLIT_FILES[split]}: no sequence ends in an item of domain {target}, "
                                f"so a model for target {target} could be neither selected nor tested. Pass "
                                f"--target {'Y' if target == 'X' else 'X'}, or add such sequences.")


def data_warnings(scen: Scenario, targets) -> list[str]:
    """What a run's numbers should be read with: items without an image, held-out sequences that repeat a
    training sequence, and a domain too small for 999 distinct negatives."""
    N, notes = scen.items.num_items, []
    zero = 0 if scen.E_img is None else int((scen.E_img == 0).all(dim=1).sum())
    if zero:
        notes.append(f"{zero:,} of {N:,} items ({100 * zero / N:.1f}%) have no image (a zero row in "
                     f"{EMBEDDINGS_FILE}): only their ID embedding can rank them")
    seen = {tuple(r) for r in torch.cat([scen.train.inputs.xy, scen.train.targets.xy[:, -1:]], 1).tolist()}
    for split in ("valid", "test"):
        cases = getattr(scen, split)
        repeats = sum(tuple(r) in seen for r in torch.cat([cases.history.xy, cases.target[:, None]], 1).tolist())
        if repeats:
            notes.append(f"{repeats:,} of {len(cases):,} {split} sequences repeat a training sequence (their "
                         f"last {scen.train.inputs.xy.shape[1] + 1} items): their targets were trained on")
    for target in targets:
        n = len(range(N)[target_items(scen, target)])
        if n - 1 < NUM_NEGATIVES:
            notes.append(f"domain {target} has {n:,} items: its {NUM_NEGATIVES} sampled negatives repeat some of "
                         f"the other {n - 1:,}, which makes the sampled999 protocol harder than full ranking")
    return notes


def eval_only(args, device) -> int:
    path = Path(args.eval_only)
    state = load_checkpoint(path)
    try:
        cfg = Config(**state["config"])
        cfg.check()
    except ConfigError as err:
        raise UsageError(f"{path}: not an IFCDSR checkpoint of this version (config {err}).") from None
    name, folder = checkpoint_data(args, state, path)
    scen = load_scenario(folder, max_len=cfg.max_len, use_images=cfg.use_image, name=name)
    check_checkpoint(state, scen, path)
    check_cases(scen, (cfg.target,))
    trainer = Trainer(state["model_name"], cfg, scen, device, path.parent, resume=False)
    load_weights(trainer.model, state, path)
    for split in ("valid", "test"):
        res = trainer.evaluate(split)
        print(f"{split} ({state['model_name']}, {cfg.target}, epoch {state['epoch']}): " + ", ".join(
            f"{p}: " + " ".join(f"{m} {v:.2f}" for m, v in res[p].items()) for p in PROTOCOLS))
    if args.export:
        export(trainer, Path(args.export), args.k or 10)
    return 0


def checkpoint_data(args, state: dict, path: Path) -> tuple[str, Path]:
    """--eval-only's data: --data-dir or --scenario when given, else the folder the checkpoint records."""
    if args.data_dir is not None or args.scenario is not None:
        return resolve_scenario(args.scenario, args.data_dir)
    folder = Path(state["data_dir"])
    if not folder.is_dir():
        raise UsageError(f"{path}: trained on {folder}, which is not there; pass that data with --data-dir DIR "
                         f"or --scenario NAME.")
    print(f"data: {folder}, as the checkpoint records (--data-dir DIR reads other data)", flush=True)
    return state["scenario"], folder


def export(trainer: Trainer, path: Path, k: int) -> None:
    """--export: for every test case of the target domain, the user, the history the model reads (its last
    max_len items, oldest first), the ground truth, its rank under both protocols (the ranks of evaluation),
    and the k best-scored items with their scores (Eq. 8 for IFCDSR), as TSV with a header; items as ASINs."""
    scen, cfg, asins = trainer.scen, trainer.cfg, trainer.scen.items.asins
    ranks = trainer.rank("test")  # the evaluation's own ranks
    cases = trainer.cases["test"][0]
    in_target = (scen.test.target >= scen.items.num_x) == (cfg.target == "Y")  # as evaluate.eval_cases selects
    users = [u for u, keep in zip(read_users(scen.path / SPLIT_FILES["test"]), in_target.tolist()) if keep]
    with trainer.exact():
        top, top_score = top_items(trainer.scorer(), cases, trainer.items, trainer.device, trainer.eval_batch(), k,
                                   scen.items.num_items)
    head = ["user", "history", "ground_truth", *(f"rank_{p}" for p in PROTOCOLS),
            *(f"{c}_{i}" for i in range(1, top.shape[1] + 1) for c in ("item", "score"))]
    lines = ["\t".join(head)]
    for j, user in enumerate(users):
        history = " ".join(asins[i] for i in cases.history.xy[j].tolist() if i != scen.items.num_items)
        lines.append("\t".join([user, history, asins[cases.target[j]], *(f"{ranks[p][j]:.1f}" for p in PROTOCOLS),
                                *(x for i, v in zip(top[j].tolist(), top_score[j].tolist())
                                  for x in (asins[i], f"{v:.6g}"))]))
    atomic_write_text(path, "\n".join(lines) + "\n")
    print(f"wrote {path}: the top {top.shape[1]} items of {len(users):,} test cases (target {cfg.target})")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse_args(argv)
    except SystemExit as exit_:  # argparse has printed what is wrong (or the help)
        return exit_.code
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        return run(args)
    except (DataError, UsageError, OSError) as err:  # OSError: a folder that cannot be written, a full disk
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\n{interrupted(argv, args)}", file=sys.stderr)
        return 130
    finally:  # --deterministic holds for this run only (main may be called again in the same process)
        torch.use_deterministic_algorithms(deterministic)


def interrupted(argv: list[str], args) -> str:
    """The Ctrl-C message: the exact command that continues the run, its --out included."""
    out = getattr(args, "run_folder", None)
    if args.eval_only or out is None or not out.is_dir():
        return "interrupted before anything was written; run the same command again"
    kept, skip = [], False
    for arg in argv:  # the same flags but --out and --resume, which are given below
        if not skip and arg not in ("--out", "--resume") and not arg.startswith("--out="):
            kept.append(arg)
        skip = arg == "--out"
    return f"interrupted; continue with\n    {shlex.join(['python', 'train.py', *kept, '--resume', '--out', str(out)])}"


def stop(signum, frame):
    """SIGTERM stops a run as Ctrl-C does: temp files are removed, and finished files stay as they were."""
    raise KeyboardInterrupt


if __name__ == "__main__":
    safe_output()
    signal.signal(signal.SIGTERM, stop)
    sys.exit(main())
