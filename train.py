"""Train and evaluate IFCDSR and the baselines: loop, model selection, runs, command line, checkpoints, run folder.

    python train.py                                  # the generated demo scenario, a few minutes on a CPU
    python train.py --scenario movie_book            # data/Movie-Book, both target domains (Table 3)
    python train.py --data-dir DIR --compare --seeds 3   # Tables 2/3 with the baselines, mean ± std, significance
    python train.py --eval-only RUN/ifcdsr/seed0/best_X.pt --export top.tsv   # each test user's top 10 items
"""
from __future__ import annotations

import argparse, contextlib, dataclasses, fcntl, itertools, json, math, os, random, re, shlex, signal, sys, time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils._pytree import tree_map

import baselines
import fused_loss
from data import (EMBEDDINGS_FILE, SPLIT_FILES, DataError, Progress, Scenario, Views, atomic_write,
                  atomic_write_all, atomic_write_text, fetch_list, file_problem, load_scenario,
                  read_users, resolve_scenario)
from evaluate import (PROTOCOLS, NonFiniteScores, check_cases, data_warnings, eval_batch, eval_cases, grid_text,
                      metrics, negatives, point_name, print_run, rank_cases, run_results, target_items, to_device,
                      top_items, warm_items)
from ifcdsr import CHOICES, IFCDSR, PRINTED, RANGES, Config, ConfigError, shapes

SELECT = ("sampled999", "MRR")  # the validation number that selects epochs and hyper-parameters


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(name: str, cfg: Config, scen: Scenario) -> torch.nn.Module:
    baseline = ROWS[name].baseline
    if baseline is not None:
        return baseline(cfg, scen.items.num_x, scen.items.num_y)
    return IFCDSR(cfg, scen.items.num_x, scen.items.num_y, scen.E_img if cfg.use_image else None)


# ----------------------------------------------------------------------------- training


@dataclass
class Selection:
    """What a training keeps per target domain: early stopping, best and last checkpoints, evaluation cases."""
    cfg: Config  # the training's config, with this target domain
    folder: Path
    epoch: int = 0  # epochs trained and validated for this target domain
    best_valid: float = -1.0  # the best validation MRR so far (selects the best epoch)
    bad: int = 0  # evaluations since the best one
    history: list = dataclasses.field(default_factory=list)  # per epoch: losses, speed, validation metrics
    cases: dict = dataclasses.field(default_factory=dict)  # split -> (its cases, their negatives), made once

    def __post_init__(self):
        self.best, self.last = (self.folder / f"{kind}_{self.cfg.target}.pt" for kind in ("best", "last"))

    def running(self) -> bool:
        return self.epoch < self.cfg.epochs and self.bad < self.cfg.patience

    def end_epoch(self, trainer: Trainer, row: dict, writes: dict, named: bool) -> str:
        """Validate (every eval_every) and queue the best and last checkpoints -> this target's part of the log."""
        self.epoch = row["epoch"] = self.epoch + 1
        best, shown = False, ""
        if self.epoch % self.cfg.eval_every == 0 or self.epoch == self.cfg.epochs:
            valid = row["valid"] = trainer.evaluate("valid", self)
            self.bad, best = self.bad + 1, valid[SELECT[0]][SELECT[1]] > self.best_valid
            if best:
                self.best_valid, self.bad = valid[SELECT[0]][SELECT[1]], 0
            shown = (f" | {self.cfg.target + ' ' if named else ''}valid MRR {valid['sampled999']['MRR']:.2f} "
                     f"NDCG@10 {valid['sampled999']['NDCG@10']:.2f}")
        self.history.append(row)
        state = training_state(trainer, self)
        if best:  # before last_*.pt: a run killed between the two writes resumes from the epoch before
            writes[self.best] = {**{k: state[k] for k in CHECKPOINT}, "valid": row["valid"]}
        writes[self.last] = state
        return shown


@contextlib.contextmanager
def tf32(device: torch.device):
    """On CUDA, fp32 products run in TF32 inside (training) and stay exact outside (evaluation); a CPU is unchanged."""
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if device.type == "cuda" else saved)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved)


class Trainer:
    """One training of a row and seed (model, optimiser, batch order), with a `Selection` per target domain."""

    def __init__(self, name: str, cfg: Config, scen: Scenario, device: torch.device, folder: Path, resume: bool,
                 targets: list[str] | None = None):
        self.name, self.cfg, self.scen, self.device = name, cfg, scen, device
        set_seed(cfg.seed)  # the seed sets the initialisation and the order of the batches
        self.model = build_model(name, cfg, scen).to(device)
        # Note: the paper's "L2 regularization coefficient" is Adam's weight_decay (L2 added to the gradient),
        # not decoupled weight decay (AdamW); C2DSR, whose settings §4 adopts, applies none. Fused: the same update
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                    fused=True if device.type == "cuda" else None)
        self.shuffle = torch.Generator().manual_seed(cfg.seed)
        self.targets = [Selection(cfg.replace(target=t), folder) for t in targets or [cfg.target]]
        self.items, self.resident, self.checkpoints = target_items(scen, cfg.target), None, Checkpoints()
        for sel in [sel for sel in self.targets if resume and sel.last.is_file()]:  # the first's: weights and states
            restore(self, sel, load_checkpoint(sel.last), training=sel is self.targets[0])
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def epoch(self) -> int:  # the epochs trained: those of every target domain still running
        return max(sel.epoch for sel in self.targets)

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    def eval_batch(self) -> int:
        return eval_batch(self.model.chunk(), self.scen.items.num_items)

    @contextlib.contextmanager
    def exact(self):
        """No gradients, and fp32 scores under any autocast: bf16 would round them to about 1/32 of their spread."""
        with torch.autocast(self.device.type, enabled=False), torch.no_grad():
            yield

    def rank(self, split: str, sel: Selection | None = None) -> dict:
        """{protocol: (S,) ranks} of a split's cases for a target domain (the first by default), from fp32 scores."""
        sel = sel or self.targets[0]
        target, items = sel.cfg.target, target_items(self.scen, sel.cfg.target)
        if split not in sel.cases:
            cases = eval_cases(getattr(self.scen, split), self.scen, target)
            sel.cases[split] = cases, negatives(cases, items, split, target)
        cases, neg = sel.cases[split]
        self.model.eval()
        try:
            with self.exact():
                return rank_cases(self.model.scorer(), cases, items, neg, self.device, self.eval_batch(),
                                  self.scen.items.num_items)
        except NonFiniteScores as err:
            raise UsageError(f"{self.name} (target {target}, seed {self.cfg.seed}) gave {err} of the {split} set "
                             f"after epoch {sel.epoch}: its weights have diverged. {self.advice()}") from None

    def advice(self) -> str:
        last = self.targets[0].last
        kept = f"the last good checkpoint, {last}, is kept" if last.is_file() else "no checkpoint was kept"
        return (f"Lower --lr (now {self.cfg.lr:g}), or check that the image embeddings ({EMBEDDINGS_FILE}) hold "
                f"values of a sensible size; {kept}.")

    def evaluate(self, split: str, sel: Selection | None = None) -> dict:
        return metrics(self.rank(split, sel))

    def batch(self, idx: torch.Tensor) -> tuple[Views, Views, dict]:
        """Training sequences `idx` on the device, with their `shapes` read from the CPU copy."""
        data = self.scen.train
        inputs, targets = data.inputs[idx], data.targets[idx]
        shape = shapes(self.scen.items.num_items, inputs, targets, self.device)
        if self.device.type == "cpu":
            return inputs, targets, shape
        if self.resident is None or self.resident[0] is not data:
            self.resident = data, to_device(data.inputs, self.device), to_device(data.targets, self.device)
        at = fused_loss.host_to(self.device, idx)
        return self.resident[1][at], self.resident[2][at], shape

    def step(self, inputs: Views, targets: Views, shape: dict) -> torch.Tensor:
        """(Eq. 7) the loss, its gradient, Adam -> (views,) the per-view losses, on the device, without a sync."""
        with tf32(self.device):  # the encoders' products, forward and backward
            with self.autocast():
                loss, parts = self.model.loss(inputs, targets, shape)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
        self.opt.step()
        return torch.stack([torch.as_tensor(v, dtype=torch.float32, device=self.device) for v in parts.values()])

    def train_epoch(self) -> dict:
        """One pass over the training set; its losses are read once, at the end: a NaN or an infinity stops the run."""
        self.model.train()
        data, views = self.scen.train, self.model.views  # views: the loss's parts
        batches = torch.randperm(len(data), generator=self.shuffle).split(self.cfg.batch_size)
        sums = torch.zeros(len(views), device=self.device)
        progress = Progress(f"    epoch {self.epoch + 1}", len(data), "sequences")
        for b, idx in enumerate(batches):
            sums += self.step(*self.batch(idx))
            progress.update(min((b + 1) * self.cfg.batch_size, len(data)))
        progress.close()
        loss = dict(zip(views, (sums / len(batches)).tolist()))
        if bad := [v for v in loss.values() if not math.isfinite(v)]:
            targets = "+".join(sel.cfg.target for sel in self.targets)
            raise UsageError(f"the loss became {bad[0]} in epoch {self.epoch + 1} of {self.name} (target {targets}, "
                             f"seed {self.cfg.seed}). {self.advice()}")
        return {"loss": loss, "seq_per_s": len(data) / (time.monotonic() - progress.start)}

    def fit(self, log_prefix: str = "") -> None:
        """Train until every target domain has stopped; a stopped one keeps the files a training of its own writes.
        Note: the paper trains 100 epochs; here training also stops after `patience` evaluations without a
        better validation MRR, and the epoch with the best one is kept: model selection on validation only."""
        t0 = time.time()
        try:
            while running := [sel for sel in self.targets if sel.running()]:
                row, writes = self.train_epoch(), {}
                valid = "".join(sel.end_epoch(self, dict(row), writes, named=len(self.targets) > 1) for sel in running)
                self.checkpoints.write(writes)  # written while the next epoch trains
                losses = " ".join(f"L^{ {'x': 'X', 'y': 'Y', 'xy': 'X+Y'}[k]} {v:.4f}" for k, v in row["loss"].items())
                print(f"{log_prefix}epoch {self.epoch:3d} | {losses}{valid} | {row['seq_per_s']:.0f} seq/s | "
                      f"{time.strftime('%H:%M:%S', time.gmtime(time.time() - t0))}", flush=True)
            self.checkpoints.wait()  # every file on disk before anything reads them
        except BaseException:  # the files being written are finished (or left as they were) before the error goes on
            self.checkpoints.wait(raise_error=False)
            raise


# ----------------------------------------------------------------------------- runs


def trainings(models: list[str], seeds: list[int], targets: tuple, grid: dict) -> Iterator[str]:
    """Prints the count of trainings -> `training i of n`, the next one as each training starts."""
    points = {m: len(grid_points(m, grid)) for m in models if ROWS[m].trained}
    shared = [m for m in points if len(target_groups(m, targets)) < len(targets)]
    n = sum(k * len(seeds) * len(target_groups(m, targets)) for m, k in points.items())
    each = "; grid points: " + ", ".join(f"{m} {k}" for m, k in points.items()) if grid else ""
    once = f"; {', '.join(shared)}: one training for both targets" if shared else ""
    print(f"trainings: {n} ({len(points)} model(s) x {len(seeds)} seed(s) x {len(targets)} target(s)"
          f"{each}{once}); {torch.get_num_threads()} CPU threads (OMP_NUM_THREADS sets them)", flush=True)
    return (f"training {i} of {n}" for i in itertools.count(1))


def train_row(name: str, cfgs: dict[str, Config], scen: Scenario, device, folder: Path, grid: dict, resume: bool,
              progress: Iterator[str], label: str) -> dict[str, dict]:
    """One row and seed: each target domain of `cfgs` keeps its grid point of best validation MRR, tested once."""
    results = {}
    for targets in target_groups(name, cfgs):
        points, best = {target: [] for target in targets}, {}
        for point in grid_points(name, grid):
            sub = folder / point_name(point) if point else folder  # named like `lr=0.001,weight_decay=0.0001`
            prefix = f"[{label} {'+'.join(targets)}{' ' + point_name(point) if point else ''}] "
            trained = train_point(name, {t: cfgs[t].replace(**point) for t in targets}, scen, device, sub, resume,
                                  progress, prefix)
            for target, (trainer, sel) in trained.items():
                points[target].append({"values": point, "valid_" + "_".join(SELECT): sel.best_valid,
                                       "folder": str(sub)})
                # Note: a tie on validation keeps the first of the tied points, in the grid's order (the order of
                # --grid's fields and values)
                if target not in best or sel.best_valid > best[target][1].best_valid:
                    best[target] = trainer, sel, point
        results |= {target: tested(*best[target], points[target] if grid else None) for target in targets}
    return results


def target_groups(name: str, targets) -> list[list[str]]:
    """The target domains that train together: all in one for a `Row.shared` row."""
    return [list(targets)] if ROWS[name].shared else [[target] for target in targets]


def train_point(name: str, cfgs: dict[str, Config], scen: Scenario, device, folder: Path, resume: bool,
                progress: Iterator[str], prefix: str) -> dict[str, tuple[Trainer, Selection]]:
    """One training for the target domains of `cfgs` (continued with --resume) -> target -> (Trainer, Selection).
    A target whose last checkpoint is at another epoch than the first's (a run killed between writes) trains apart."""
    print(f"\n{prefix}{next(progress)}", flush=True)
    trainer = Trainer(name, next(iter(cfgs.values())), scen, device, folder, resume, targets=list(cfgs))
    apart = [sel for sel in trainer.targets if sel.running() and sel.epoch != trainer.targets[0].epoch]
    trainer.targets = [sel for sel in trainer.targets if sel not in apart]
    done = {}
    for each in itertools.chain([trainer], (Trainer(name, sel.cfg, scen, device, folder, resume) for sel in apart)):
        each.fit(prefix)  # an apart target domain's Trainer is built (and seeded) once the one before has trained
        done |= {sel.cfg.target: (each, sel) for sel in each.targets}
    return done


def tested(trainer: Trainer, sel: Selection, chosen: dict, points: list | None) -> dict:
    """A target domain's result: its best checkpoint's test ranks (and the grid's points)."""
    state = load_checkpoint(sel.best)
    load_weights(trainer.model, state, sel.best)
    ranks = trainer.rank("test", sel)  # the only time the test set is read
    result = {"config": state["config"], "best_epoch": state["epoch"], "checkpoint": str(sel.best),
              "history": sel.history, "valid": state["valid"], "test": metrics(ranks), "ranks": ranks,
              "cases": sel.cases["test"][0]}
    return result if points is None else result | {"grid": points, "chosen": chosen}


def grid_points(name: str, grid: dict) -> list[dict]:
    """The distinct points at which row `name` trains: the product of the --grid fields that act on it."""
    lists = {k: v for k, v in grid.items() if acts(k, name)}
    return [dict(zip(lists, values)) for values in itertools.product(*lists.values())]


def model_config(model: str, cfg: Config, target: str, seed: int) -> Config:
    row = ROWS[model]
    return cfg.replace(use_image=row.use_image, multi_attention=row.multi_attention, target=target, seed=seed)


def row_folder(out: Path, model: str, seed: int) -> Path:
    return out / model / f"seed{seed}"


def run(s: Settings) -> int:
    """A run: its rows, seeds and target domains into the run folder, whose name a Ctrl-C then prints."""
    name, folder = resolve_scenario(s.scenario, s.data_dir)
    models = choose_models(s.models, not s.cfg.use_image, not s.cfg.multi_attention, name,
                           (folder / EMBEDDINGS_FILE).exists())
    check_acts(s, models)
    out = output_folder(s.out, name, s.resume)
    try:
        return train_rows(s, name, folder, models, out)
    except KeyboardInterrupt as interrupt:
        raise Interrupted(out) from interrupt


def train_rows(s: Settings, name: str, folder: Path, models: list[str], out: Path) -> int:
    """Every row × seed × target domain, then results.json, test_ranks.npz and the tables."""
    scen = load_scenario(folder, max_len=s.cfg.max_len, name=name, use_images=any(ROWS[m].use_image for m in models))
    check_cases(scen, s.targets)
    lock = lock_run_folder(out, s.resume)  # held until the run ends (its file closes then, or when the process does)
    if s.resume:  # everything that can refuse a --resume, before anything is written
        check_run_folder(out, scen, planned(s, models, out))
        check_kept(out, models, s.seeds, s.targets)
    print(f"scenario {name} ({folder}): |X| = {scen.items.num_x}, |Y| = {scen.items.num_y}, "
          f"{len(scen.train)} train / {len(scen.valid)} valid / {len(scen.test)} test sequences; "
          f"device {s.device}; models {', '.join(models)}; seeds {', '.join(map(str, s.seeds))}; output {out}\n"
          f"readings: {readings(s.cfg)}" + (f"; --grid {grid_text(s.grid)}, chosen per row on validation"
                                             if s.grid else ""), flush=True)
    print("".join(f"warning: {note}\n" for note in data_warnings(scen, s.targets)), end="", flush=True)
    result = partial(row_result, s=s, scen=scen, out=out, progress=trainings(models, s.seeds, s.targets, s.grid))
    rows = ((m, seed, result(m, seed)) for m in models for seed in (s.seeds if ROWS[m].trained else [None]))
    results, ranks = run_results({
        "scenario": name, "data_dir": str(folder), "data_sha256": scen.data_sha256, "config": asdict(s.cfg),
        "literal": s.literal, "deterministic": s.deterministic, "models": models, "seeds": s.seeds,
        **({"grid": s.grid} if s.grid else {})}, warm_items(scen), rows)
    save_run(out, results, ranks)
    lock.close()
    print_run(results)  # the same as `python -m tools.report RUN`
    print(f"\nresults: {out / 'results.json'}")
    return 0


def row_result(model: str, seed: int | None, s: Settings, scen: Scenario, out: Path,
               progress: Iterator[str]) -> dict[str, dict]:
    """One row and seed, for each target domain: popularity ranked, or the row trained and tested."""
    if not ROWS[model].trained:
        batch = eval_batch(fused_loss.chunk(s.cfg.score_chunk, torch.device("cpu")), scen.items.num_items)
        return {target: baselines.popularity(scen, target, batch) for target in s.targets}
    return train_row(model, {target: model_config(model, s.cfg, target, seed) for target in s.targets}, scen,
                     s.device, row_folder(out, model, seed), s.grid, s.resume, progress, f"{model} seed {seed}")


def check_kept(out: Path, models: list[str], seeds: list[int], targets: tuple) -> None:
    """A --resume never shrinks a finished run: every row, seed and target domain of its results.json must be in
    the command, which writes results.json anew from what it runs."""
    try:
        runs = json.loads((out / "results.json").read_text())["runs"] if (out / "results.json").is_file() else {}
        held = {(m, e["seed"], t) for m, entries in runs.items() for e in entries for t in e["test"]}
    except (ValueError, UnicodeDecodeError, TypeError, KeyError, AttributeError, RecursionError):
        return  # unreadable: the resumed run writes it anew (its checkpoints were checked)
    asked = {(m, s if ROWS[m].trained else None, t) for m in models for s in seeds for t in targets}
    dropped = sorted(held - asked, key=str)
    if dropped:
        what = ", ".join(f"{m} seed {s} target {t}" if s is not None else f"{m} target {t}" for m, s, t in dropped)
        raise UsageError(f"{out / 'results.json'}: holds {what}, which this command would drop from it; resume "
                         f"with the run's own --models, --seeds and --target, or write to another --out.")


def planned(s: Settings, models: list[str], out: Path) -> dict[Path, tuple[str, Config]]:
    """The last_*.pt files that this command continues: path -> (row, config) of every training of the run."""
    plan = {}
    for model, seed, target in itertools.product([m for m in models if ROWS[m].trained], s.seeds, s.targets):
        cfg = model_config(model, s.cfg, target, seed)
        for point in grid_points(model, s.grid):
            sub = row_folder(out, model, seed) / point_name(point) if point else row_folder(out, model, seed)
            plan[sub / f"last_{target}.pt"] = model, cfg.replace(**point)
    return plan


def eval_only(s: Settings) -> int:
    """--eval-only: a checkpoint's validation and test metrics, as it was trained; with --export its top-k items."""
    path, dropped = s.eval_only, [s.given[k] for k in vars(s) if k in s.given and k not in (
        "eval_only", "scenario", "data_dir", "device", "deterministic", "export", "k")]
    if dropped:
        raise UsageError(f"--eval-only evaluates the checkpoint as it was trained (its model, target, config and "
                         f"folder) and writes nothing but --export's file; drop {', '.join(dropped)}.")
    if not 1 <= s.k <= 10_000:
        raise UsageError(f"--k {s.k}: expected an integer in [1, 10,000].")
    if s.export and (s.export.exists() or not s.export.parent.is_dir()):
        raise UsageError(f"--export {s.export}: {'already exists' if s.export.exists() else 'no such folder'}; "
                         f"choose another file.")
    state = load_checkpoint(path)
    cfg = checkpoint_config(state, path)
    name, folder = checkpoint_data(s.scenario, s.data_dir, state, path)
    scen = load_scenario(folder, max_len=cfg.max_len, use_images=cfg.use_image, name=name)
    check_checkpoint(state, scen, path)
    check_cases(scen, (cfg.target,))
    with torch.device("meta"):  # nothing allocated: the config's weight shapes against the file's
        meta = dataclasses.replace(scen, E_img=None if scen.E_img is None else scen.E_img.to("meta"))
        check_weights(build_model(state["model_name"], cfg, meta), state["model"], path)
    trainer = Trainer(state["model_name"], cfg, scen, s.device, path.parent, resume=False)
    load_weights(trainer.model, state, path)
    for split in ("valid", "test"):
        res = trainer.evaluate(split)
        print(f"{split} ({state['model_name']}, {cfg.target}, epoch {state['epoch']}): " + ", ".join(
            f"{p}: " + " ".join(f"{m} {v:.2f}" for m, v in res[p].items()) for p in PROTOCOLS))
    if s.export:
        export(trainer, s.export, s.k)
    return 0


# ----------------------------------------------------------------------------- the command line


def safe_output() -> None:
    """τ, α and ± as escapes like \\u03c4 where the output's encoding cannot write them (PYTHONIOENCODING=ascii)."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


class UsageError(Exception):
    """A bad command line or checkpoint; the message says what to do (train.py prints it and exits with 2)."""


def bounded(kind: type, low: int | float, high: int | float) -> Callable[[str], int | float]:
    """An argparse type: a finite int or float in [low, high]. Anything else (nan, inf, out of range, not a
    number) stops the command before any work, with exit code 2 and a message that gives the range."""
    what = f"an integer in [{low:,}, {high:,}]" if kind is int else f"a number in [{low:g}, {high:g}]"

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:  # False for nan
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


DEMO_EPOCHS = 5  # the demo's default, so that `python train.py` ends within minutes on 2 CPU cores
GRID = {"lr": [1e-3, 5e-4, 1e-4], "weight_decay": [1e-4, 5e-5, 1e-5]}  # paper §4's 3x3 grid: a bare --grid
SHORTCUTS = {  # flag: (the Config field it sets as --set FIELD=VALUE does, help); a bool field's flag sets it false
    "--no-image": ("use_image", "the rows without the image branch (α = 1)"),
    "--no-multi-attention": ("multi_attention", "the rows with only the merged view S^{X+Y}"),
    "--epochs": ("epochs", "training epochs"), "--batch-size": ("batch_size", "mini-batch size"),
    "--lr": ("lr", "learning rate"), "--weight-decay": ("weight_decay", "L2 coefficient"),
    "--patience": ("patience", "early stopping"), "--eval-every": ("eval_every", "validate every N epochs"),
    "--seed": ("seed", "one training seed (initialisation and batch order)"), "--alpha": ("alpha", "α (Eq. 5)"),
    "--lambda1": ("lambda1", "λ1 (Eq. 7/8)"), "--lambda2": ("lambda2", "λ2 (Eq. 7/8)"),
    "--temperature": ("temperature", "τ dividing Eq. 2; 1 = as printed"),
    "--loss-norm": ("loss_norm", "Eq. 6/7: each view's mean, or the sum as printed"),
    "--softmax-over": ("softmax_over", "Eq. 3/4: all N items, or each view's own domain as printed")}


Settings = argparse.Namespace  # the flags' values, and what `read` makes of them: cfg, grid, seeds, targets, device


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line; `given` maps each option given, one whose value is not its default (its dest), to its flag."""
    p = argparse.ArgumentParser(description="Train and evaluate IFCDSR and the baselines (README has the details).")
    arg, defaults = p.add_argument, asdict(Config())
    arg("--scenario", help="demo (default), food_kitchen or movie_book")
    arg("--data-dir", help="any C2DSR-format scenario folder")
    arg("--target", default="both", choices=("X", "Y", "both"), help="target domain of Eq. 7-9")
    arg("--models", help=f"rows to run, comma-separated: {', '.join(ROWS)}; or a preset: {', '.join(PRESETS)}")
    for preset, what in (("compare", ",".join(PRESETS["compare"])), ("ablation", "Table 4's rows")):
        arg(f"--{preset}", action="store_const", const=preset, dest="models", help=f"--models {preset}: {what}")
    arg("--seeds", help="K seeds (0..K-1) or a list a,b,c; every model is trained once per seed")
    for flag, (field, what) in SHORTCUTS.items():  # each sets its Config field, as --set does
        default, demo = defaults[field], f"; {DEMO_EPOCHS} on the demo" if field == "epochs" else ""
        arg(flag, dest=field, **dict(action="store_const", const="false", help=what) if isinstance(default, bool)
            else dict(choices=CHOICES.get(field), help=f"{what} (default {default}{demo})"))
    arg("--literal", action="store_true", help=f"pin Eq. 2-7 as printed: {PRINTED}")
    arg("--set", nargs="+", action="extend", default=[], metavar="FIELD=VALUE", help="any Config field, e.g. q=32")
    arg("--grid", nargs="*", action="extend", metavar="FIELD=V1,V2", help="train every row at each point of these "
        "fields' values and keep, per row and seed, the best on validation; bare: the paper's lr x L2 grid")
    arg("--device", default="auto", choices=("auto", "cpu", "cuda"))
    arg("--deterministic", action="store_true", help="deterministic kernels: a run and its resume agree bit for bit")
    arg("--out", help="output folder (default runs/<scenario>-<time>)")
    arg("--resume", action="store_true", help="continue the interrupted run in --out (or the latest)")
    arg("--eval-only", metavar="CKPT", type=Path, help="evaluate a best_*.pt checkpoint on valid and test")
    arg("--export", metavar="FILE", type=Path, help="with --eval-only: each test case's top-k items, as TSV")
    arg("--k", type=int, help="--export's k (default 10)")
    args, flags = p.parse_args(argv), {field: flag for flag, (field, _) in SHORTCUTS.items()}
    args.given = {k: flags.get(k, "--" + k.replace("_", "-")) for k, v in vars(args).items() if v != p.get_default(k)}
    return args


def read(args) -> Settings:
    """The parsed command line as Settings, every flag checked before any work."""
    if args.export and not args.eval_only or args.k and not args.export:
        raise UsageError("--export FILE needs --eval-only CKPT" if args.export else "--k needs --export FILE")
    if args.scenario is not None and args.data_dir is not None:
        raise UsageError("--scenario and --data-dir cannot both act: --data-dir is the scenario folder; drop one.")
    cfg, grid, labels = overrides(args)
    flags = dict(labels)
    if args.models and (not cfg.multi_attention or args.models == "ablation" and not cfg.use_image):
        field, why = ("use_image", "--ablation trains Table 4's rows with and without images and views") if \
            cfg.multi_attention else ("multi_attention", "the rows of one view are --models original,image_fusion")
        raise UsageError(f"--models {args.models} and {flags[field]} cannot both act: {why}; drop one of them.")
    device = torch.device(args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available; use --device cpu.")
    if args.seeds is not None and "seed" in flags:
        raise UsageError(f"give either {flags['seed']} or --seeds, not both.")
    rows = args.given.get("models") or flags.get("use_image") or flags.get("multi_attention") or "the default rows"
    return Settings(**vars(args) | dict(
        cfg=cfg, grid=grid, device=device, k=args.k or 10, seeds=parse_seeds(args.seeds) if args.seeds else [cfg.seed],
        targets=("X", "Y") if args.target == "both" else (args.target,), rows_flag=rows,
        labels=labels + [("seed", "--seeds")] * bool(args.seeds)))


def overrides(args) -> tuple[Config, dict[str, list], list[tuple[str, str]]]:
    """--set, the shortcuts, --literal and --grid on Config -> (config, --grid's {field: [values]}, [(field, flag)])."""
    given = [(*parse_value(p, f"--set {p}"), f"--set {p}", f"--set {p.partition('=')[0]}") for p in args.set]
    for flag, (field, _) in SHORTCUTS.items():
        if (value := getattr(args, field)) is not None:
            shown = flag if value == "false" else f"{flag} {value}"
            given.append((*parse_value(f"{field}={value}", shown), shown, flag))
    given += [(k, v, f"--literal ({k}={v}, as printed)", "--literal") for k, v in PRINTED.items() if args.literal]
    searched = list(GRID.items()) if args.grid == [] else [parse_list(pair) for pair in args.grid or []]
    given += [(k, v, f"--grid {grid_text({k: v})}", f"--grid {k}" if args.grid else "--grid") for k, v in searched]
    first = {}
    for field, value, text, _ in given:  # the same text is the same value, even NaN
        if (old := first.setdefault(field, (value, text)))[1] != text and old[0] != value:
            raise UsageError(f"{old[1]} and {text} disagree on {field}; drop one of them.")
    grid = dict(searched)
    demo = args.scenario in (None, "demo") and args.data_dir is None and not args.eval_only
    sets = ({"epochs": DEMO_EPOCHS} if demo else {}) | {f: v for f, (v, _) in first.items() if f not in grid}
    try:  # the settings alone, then at each point of the grid
        for point in [{}, *(dict(zip(grid, values)) for values in itertools.product(*grid.values()))]:
            Config().replace(**sets, **point)
    except ConfigError as err:  # a value outside its range, or n_heads that does not divide q
        where = f"--grid: at {point_name(point)}" if point else first.get(err.field, (None, "--set"))[1]
        raise UsageError(f"{where}: {err}.") from None
    return Config().replace(**sets), grid, [(field, label) for field, _, _, label in given]


def parse_value(pair: str, shown: str) -> tuple[str, object]:
    """FIELD=VALUE -> (field, value) typed as the field's default (a bool: true or false); `shown` names it."""
    defaults = {k: v for k, v in asdict(Config()).items() if k != "target"}  # the target is --target's
    field, eq, text = pair.partition("=")
    if field not in defaults or not eq:
        raise UsageError(f"{shown}: expected FIELD=VALUE, FIELD one of {', '.join(defaults)}"
                         + " (the target domain is --target's)" * (field == "target") + ".")
    default = defaults[field]
    try:
        return field, {"true": True, "false": False}[text] if isinstance(default, bool) else type(default)(text)
    except (KeyError, ValueError):  # a str field takes any text
        expected = {bool: "true or false", int: "an integer"}.get(type(default), "a number")
        raise UsageError(f"{shown}: expected {expected} for {field} (default {default}), found {text!r}.") from None


def parse_list(pair: str) -> tuple[str, list]:
    """--grid's FIELD=V1,V2,... -> (field, [values]), each value typed as --set types it."""
    refused = {  # Config fields that --grid refuses, and why
        "seed": "the seeds are --seeds K or a,b,c", "use_image": "each row has its own; choose rows with --models",
        "multi_attention": "each row has its own; choose rows with --models",
        "max_len": "the scenario's sequences are cut to max_len once a run; run one command per value",
        "score_chunk": "it sets memory only: every value gives the same numbers"}
    field, eq, text = pair.partition("=")
    if not eq or not text:
        raise UsageError(f"--grid {pair}: gives no value; expected FIELD=V1,V2,... (one list per field), like "
                         f"--grid temperature=1,0.1.")
    values = [parse_value(f"{field}={v}", f"--grid {field}={v}")[1] for v in text.split(",")]
    repeated = [v for i, v in enumerate(values) if v in values[:i]]
    if field in refused or repeated:
        why = f"{field} cannot be searched: {refused[field]}" if field in refused else \
            f"lists {repeated[0]} twice; give each value once"
        raise UsageError(f"--grid {pair}: {why}.")
    return field, values


def parse_seeds(seeds: str) -> list[int]:
    """--seeds K (0..K-1) or a list a,b,c of distinct seeds."""
    (low, high), most = RANGES["seed"], 1000
    try:
        chosen = [int(s) for s in seeds.split(",") if s.strip()]
        chosen = chosen if "," in seeds else list(range(chosen[0])) if chosen[0] <= most else []
    except (ValueError, IndexError):
        chosen = []
    if not 1 <= len(chosen) <= most or not low <= min(chosen) <= max(chosen) <= high \
            or len(set(chosen)) < len(chosen):
        raise UsageError(f"--seeds {seeds!r}: expected a count K in [1, {most}] (seeds 0..K-1) or a list of at "
                         f"most {most} distinct seeds in [{low}, {high:,}], like 0,3,7.")
    return chosen


def choose_models(models: str | None, no_image: bool, no_multi_attention: bool, name: str, images: bool) -> list[str]:
    """The rows to run, in the tables' order: --models (a preset or a list), else the default ones."""
    if models is None:  # the default preset (on the demo the demo's), as --no-image and --no-multi-attention vary it
        preset = "demo" if name == "demo" and not (no_image or no_multi_attention) else "default"
        return [variant(not no_image, not no_multi_attention) if m == "ifcdsr" else m for m in PRESETS[preset]]
    chosen = PRESETS.get(models) or [m.strip() for m in models.split(",") if m.strip()]
    if (unknown := [m for m in chosen if m not in ROWS]) or not chosen:
        raise UsageError(f"--models {models!r}: {f'unknown model(s) {unknown}' if unknown else 'names no model'}; "
                         f"expected a comma-separated list of {', '.join(ROWS)}, or a preset ({', '.join(PRESETS)}).")
    imaged = [m for m in chosen if ROWS[m].use_image]
    why = "--no-image" if no_image else f"the scenario has no {EMBEDDINGS_FILE}"
    if (no_image or not images) and models == "compare":
        print(f"{why}: running only the rows that need no image embeddings", flush=True)
        chosen = [m for m in chosen if m not in imaged]
    elif (no_image or not images and models not in PRESETS) and imaged:
        raise UsageError(f"--models {','.join(imaged)} need(s) image embeddings, "
                         f"but {why}. Build them (tools/embed.py) or leave those rows out." + fetch_list(name))
    return [m for m in ROWS if m in chosen]


def check_acts(s: Settings, models: list[str]) -> None:
    """A setting that acts on none of the rows run (`acts`) is refused: it would change nothing."""
    acting = {label for field, label in s.labels if any(acts(field, m) for m in models)}
    if idle := [label for label in dict.fromkeys(label for _, label in s.labels) if label not in acting]:
        one = len(idle) == 1
        raise UsageError(f"{', '.join(idle)}: act{'s' * one} on none of the rows of {s.rows_flag} ({', '.join(models)})"
                         f"; drop {'it' if one else 'them'}, or choose other rows with --models.")


def readings(cfg: Config) -> str:
    """The open readings of a config, in one line for the run header."""
    printed = all(getattr(cfg, k) == v for k, v in PRINTED.items())
    return (f"τ = {cfg.temperature:g}, loss {cfg.loss_norm}, softmax over {cfg.softmax_over} items"
            + (" (the equations as printed)" if printed else " (not as printed; --literal pins the printed forms)"))


# ----------------------------------------------------------------------------- the rows


@dataclass(frozen=True)
class Row:
    """One model of the tables. Note: Table 4's rows read as: "original framework" = ID only and the merged view
    S^{X+Y} alone; "+ image fusion" adds the image branch; "+ multiple attention" (the three views) is IFCDSR."""
    baseline: type | None = None  # a baseline's class; None for an IFCDSR row and for popularity
    use_image: bool = False  # Config.use_image: the image branch (Eq. 5); a row with it needs image embeddings
    multi_attention: bool = True  # Config.multi_attention: the three views; False: S^{X+Y} alone
    trained: bool = True  # False: popularity ranks by training counts, once (seed None), with no checkpoint

    @property
    def ifcdsr(self) -> bool:
        return self.trained and self.baseline is None

    @property
    def shared(self) -> bool:
        """One training serves both targets: a merged baseline's loss ignores the target; IFCDSR's (Eq. 7) does not."""
        return self.baseline is not None and self.baseline.merged


ROWS = {  # every row, in the paper's order: baselines first, IFCDSR last
    "popularity": Row(trained=False), "gru4rec": Row(baselines.GRU4Rec), "sasrec": Row(baselines.SASRec),
    "gru4rec_target": Row(baselines.GRU4RecTarget), "sasrec_target": Row(baselines.SASRecTarget),
    "original": Row(use_image=False, multi_attention=False),  # Table 4 row 1
    "image_fusion": Row(use_image=True, multi_attention=False),  # Table 4 row 2
    "ifcdsr_id": Row(use_image=False, multi_attention=True),  # --no-image
    "ifcdsr": Row(use_image=True, multi_attention=True)}  # Table 4 row 3: + multiple attention
PRESETS = {  # --models NAME: a named set of rows; the demo's default adds the ID-only model to show what images add
    "default": ("popularity", "ifcdsr"), "demo": ("popularity", "ifcdsr_id", "ifcdsr"),
    "compare": ("popularity", "gru4rec", "sasrec", "ifcdsr_id", "ifcdsr"),  # --compare: Tables 2/3's rows
    "ablation": ("popularity", "original", "image_fusion", "ifcdsr")}  # --ablation: Table 4's rows


def variant(use_image: bool, multi_attention: bool) -> str:
    """The IFCDSR row of these two flags."""
    return next(name for name, row in ROWS.items() if row.ifcdsr and (row.use_image, row.multi_attention) == (
        use_image, multi_attention))


def acts(field: str, name: str) -> bool:
    """Whether Config field `field` changes row `name`."""
    row = ROWS[name]
    if field in ("max_len", "score_chunk", "use_image", "multi_attention"):  # on every row, popularity too
        return True
    if row.baseline is not None:  # a baseline reads no reading, α or λ; GRU4Rec has no attention blocks
        return field not in (*PRINTED, "alpha", "lambda1", "lambda2") and not (
            field in ("n_blocks", "n_heads") and issubclass(row.baseline, baselines.GRU4Rec))
    return row.trained and (field != "alpha" or row.use_image) and (  # S^{X+Y}'s softmax is over all items anyway
        row.multi_attention or field not in ("lambda1", "lambda2", "softmax_over"))


# ----------------------------------------------------------------------------- checkpoints


CHECKPOINT = {  # what evaluation needs, in best_*.pt: each field's type as train.py writes it (read as data, checked)
    "model_name": str, "model": dict, "config": dict, "scenario": str, "data_dir": str, "data_sha256": str,
    "images_sha256": (str, type(None)), "num_x": int, "num_y": int, "epoch": int, "best_valid": float}
RESUME = {"optimizer": dict, "rng": dict, "bad": int, "history": list}  # what a resume needs besides, in last_*.pt


def training_state(trainer: Trainer, sel: Selection | None = None) -> dict:
    """last_*.pt of a target domain (the first by default)."""
    sel, scen = sel or trainer.targets[0], trainer.scen
    cuda = torch.cuda.get_rng_state(trainer.device) if trainer.device.type == "cuda" and torch.cuda.is_initialized() \
        else None  # the training device's own (none on a CPU, or on a simulated GPU)
    return {"model_name": trainer.name, "model": trainer.model.state_dict(), "optimizer": trainer.opt.state_dict(),
            "config": asdict(sel.cfg), "scenario": scen.name, "data_dir": str(scen.path), "data_sha256":
            scen.data_sha256, "images_sha256": scen.images_sha256, "num_x": scen.items.num_x, "num_y": scen.items.num_y,
            "epoch": sel.epoch, "best_valid": sel.best_valid, "bad": sel.bad, "history": sel.history,
            "rng": {"torch": torch.get_rng_state(), "shuffle": trainer.shuffle.get_state(), "cuda": cuda}}


def restore(trainer: Trainer, sel: Selection, state: dict, training: bool = True) -> None:
    """A last_*.pt's schedule for its target domain and, with `training`, the weights, optimiser and random
    states of the training, onto the device this run trains on, whichever device wrote them."""
    check_checkpoint(state, trainer.scen, sel.last)
    check_same_run(state, trainer.name, sel.cfg, sel.last)
    sel.epoch, sel.best_valid, sel.bad, sel.history = (
        state[k] for k in ("epoch", "best_valid", "bad", "history"))
    print(f"  resumed from {sel.last} after epoch {sel.epoch}", flush=True)
    if not training:
        return
    load_weights(trainer.model, state, sel.last)  # E_img is not stored: it is the data's
    rng = state["rng"]
    try:  # Adam's update as a new optimiser's on this device (fused on CUDA), whatever the writer's was
        for group in state["optimizer"]["param_groups"]:
            group.update({k: trainer.opt.defaults[k] for k in ("foreach", "fused", "capturable")})
        trainer.opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(rng["torch"])
        trainer.shuffle.set_state(rng["shuffle"])
        if trainer.device.type == "cuda" and isinstance(rng.get("cuda"), torch.Tensor):
            torch.cuda.set_rng_state(rng["cuda"], trainer.device)
    except (AttributeError, KeyError, TypeError, ValueError, RuntimeError) as err:
        raise UsageError(f"{sel.last}: its optimiser or random states do not fit this training "
                         f"({type(err).__name__}: {str(err)[:200]}); start a new run with another --out.") from None


def save(state: dict, path: Path) -> None:
    """A checkpoint, written whole (a temp file, then a rename) or not at all."""
    try:
        atomic_write(path, partial(torch.save, state))
    except RuntimeError as err:  # torch's zip writer reports a failed write (a full disk) as a RuntimeError
        raise OSError(f"{path}: could not be written ({str(err).splitlines()[0][:200]}); is the disk full? "
                      f"The previous checkpoint is kept: free space and continue with --resume.") from None


WRITER = ThreadPoolExecutor(1, "checkpoints")  # one checkpoint write at a time, while training goes on


class Checkpoints:
    """Checkpoints written by `WRITER` from CPU copies while training goes on; `wait`: until on disk, or its error."""
    pending = None

    def write(self, states: dict[Path, dict]) -> None:
        self.wait()
        copies = tree_map(lambda x: x.detach().to("cpu", copy=True) if isinstance(x, torch.Tensor) else x, states)
        self.pending = WRITER.submit(lambda: [save(state, path) for path, state in copies.items()])

    def wait(self, raise_error: bool = True) -> None:
        pending, self.pending = self.pending, None
        if pending and (error := pending.exception()) and raise_error:
            raise error


def load_checkpoint(path: Path) -> dict:
    """A checkpoint read as data onto the CPU (nothing in it runs), each field of CHECKPOINT (and RESUME) checked."""
    problem = file_problem(path) or (not zipfile.is_zipfile(path) and "not an IFCDSR checkpoint (not the zip "
                                     "archive that torch.save writes: a foreign or truncated file)")
    try:  # not after a `problem`: a FIFO would block torch.load, /dev/zero fill memory
        state = None if problem else torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError: its pickle asks for more than data; else a damaged record
        problem = f"not an IFCDSR checkpoint ({type(err).__name__}: not plain data, or damaged; nothing in it was run)"
    if problem:
        raise UsageError(f"{path}: {problem}; expected a best_*.pt or last_*.pt file that train.py wrote.")
    state = state if isinstance(state, dict) else {}
    kinds = {**CHECKPOINT, **(RESUME if path.name.startswith("last_") else {})}
    wrong = next((k for k, kind in kinds.items() if k not in state or not isinstance(state[k], kind)
                  or k in ("epoch", "bad") and not 0 <= state[k] <= 10**6
                  or k == "history" and not all(isinstance(row, dict) for row in state[k])), None)
    if wrong is not None:
        found = f"{wrong} = {state[wrong]!r:.80}" if wrong in state else f"missing {wrong}"
        raise UsageError(f"{path}: not an IFCDSR checkpoint of this version ({found}); train again with the same "
                         f"command to re-create it.")
    return state


def check_weights(model: torch.nn.Module, weights: dict, path: Path) -> None:
    """A checkpoint's weights have the shapes of the model its config builds (`model`, on the meta device)."""
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if shapes != {k: tuple(getattr(v, "shape", ())) for k, v in weights.items()}:
        k = next(k for k in sorted(shapes.keys() | weights.keys()) if k not in shapes or k not in weights
                 or shapes[k] != tuple(weights[k].shape))
        raise UsageError(f"{path}: its weights do not fit the model its config builds ({k}: "
                         f"{tuple(weights[k].shape) if k in weights else 'missing'} in the file, "
                         f"{shapes.get(k, 'none')} for the config); train again into another --out.")


def load_weights(model: torch.nn.Module, state: dict, path: Path) -> None:
    """The checkpoint's weights into `model`, or a message: another row's, or an older form of its row's, do not fit."""
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, TypeError) as err:
        raise UsageError(f"{path}: its weights do not fit this model ({str(err).splitlines()[0]}); train again "
                         f"into another --out.") from None


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
    schedule = ("epochs", "patience", "eval_every")  # what a --resume may change: e.g. train a finished run longer
    differs = sorted(k for k, v in asdict(cfg).items() if k not in schedule and state["config"].get(k) != v)
    if state["model_name"] != name or differs:
        raise UsageError(f"{path}: was written by {state['model_name']} with a different config "
                         f"({', '.join(differs) or 'model'}); resume with the same flags (only --epochs, "
                         f"--patience, --eval-every may change), or start a new run with another --out.")


def checkpoint_config(state: dict, path: Path) -> Config:
    """The config a checkpoint was trained with, checked against Config's ranges and its row's flags."""
    try:
        cfg = Config(**state["config"])
        cfg.check()
    except (ConfigError, TypeError) as err:  # TypeError: a field that Config does not have
        raise UsageError(f"{path}: not an IFCDSR checkpoint of this version (config {err}).") from None
    row = ROWS.get(state["model_name"])
    if not (row and row.trained and (cfg.use_image, cfg.multi_attention) == (row.use_image, row.multi_attention)):
        raise UsageError(f"{path}: not an IFCDSR checkpoint of this version (model_name = {state['model_name']!r} "
                         f"with use_image {cfg.use_image}, multi_attention {cfg.multi_attention}: no row that train.py "
                         f"trains); train again with the same command to re-create it.")
    return cfg


def checkpoint_data(scenario: str | None, data_dir: str | None, state: dict, path: Path) -> tuple[str, Path]:
    """--eval-only's data: --data-dir or --scenario when given, else the folder the checkpoint records."""
    if data_dir is not None or scenario is not None:
        return resolve_scenario(scenario, data_dir)
    folder = Path(state["data_dir"])
    if not folder.is_dir():
        raise UsageError(f"{path}: trained on {folder}, which is not there; pass that data with --data-dir DIR "
                         f"or --scenario NAME.")
    print(f"data: {folder}, as the checkpoint records (--data-dir DIR reads other data)", flush=True)
    return state["scenario"], folder


# ----------------------------------------------------------------------------- the run folder


LOCK = ".lock"  # in every run folder: locked by the process that writes the folder, which writes its id there


def save_run(out: Path, results: dict, ranks: dict) -> None:
    """results.json and test_ranks.npz (`ranks`: its arrays by key), both written whole before either is replaced."""
    text = json.dumps(results, indent=1, allow_nan=False)  # strict JSON: a NaN or an infinity is an error
    atomic_write_all({out / "results.json": lambda f: f.write(text.encode("utf-8")),
                      out / "test_ranks.npz": lambda f: np.savez(f, **ranks)})


def output_folder(out: str | None, name: str, resume: bool) -> Path:
    """--out, or runs/<name>-<time> (with --resume, the latest such folder)."""
    if out is None and resume:
        return latest_run(name)
    out = Path(out or f"runs/{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    if not out.is_dir() and (out.exists() or out.is_symlink()):  # a file, or a symlink to nothing
        what = "is a file, not a folder" if out.exists() else f"a symlink to {os.readlink(out)}, which does not exist"
        raise UsageError(f"--out {out}: {what}; choose another --out.")
    check_not_a_run(out, resume)
    return out


def latest_run(name: str) -> Path:
    """The latest runs/<name>-YYYYmmdd-HHMMSS of exactly this scenario name."""
    stamped = re.compile(re.escape(name) + r"-\d{8}-\d{6}")
    found = sorted(p for p in Path("runs").glob(f"{name}-*") if stamped.fullmatch(p.name))
    if not found:
        raise UsageError(f"--resume: no earlier run of {name} under runs/; pass --out DIR.")
    return found[-1]


def check_not_a_run(out: Path, resume: bool) -> None:
    if not resume and out.is_dir() and any(p.name != LOCK for p in out.iterdir()):
        raise UsageError(f"{out} already holds a run; pass --resume to continue it, or another --out.")


def lock_run_folder(out: Path, resume: bool):
    """`out` created and locked until this process ends, however it ends -> the lock file, which names the process."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK
    problem = "a symlink" if path.is_symlink() else path.exists() and file_problem(path)
    if problem:  # opening a FIFO would block; a symlink could point anywhere
        raise UsageError(f"{path}: {problem}, not the run's lock file; delete it and run again.")
    lock = open(path, "a+")  # not truncated before it is locked: it names the holder
    try:
        fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.seek(0)
        raise UsageError(f"{out}: another train.py (process {lock.read(20).strip() or '?'}) is writing this run "
                         f"folder; wait until it ends (or stop it), or choose another --out.") from None
    lock.truncate(0)
    print(os.getpid(), file=lock, flush=True)
    check_not_a_run(out, resume)  # another run may have filled it since `output_folder` looked
    for stale in out.rglob(".*.tmp"):  # the temp files of a killed run: only this process writes here
        stale.unlink()
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


class Interrupted(KeyboardInterrupt):
    """A Ctrl-C (or SIGTERM) once the run folder `out` is chosen."""

    def __init__(self, out: Path):
        super().__init__()
        self.out = out


def interrupted(argv: list[str], out: Path | None) -> str:
    """The Ctrl-C message: the exact command that continues the run in `out`, its --out included."""
    if out is None or not out.is_dir():
        return "interrupted before anything was written; run the same command again"
    kept, skip = [], False
    for arg in argv:  # the same flags but --out and --resume, which are given below
        if not skip and arg not in ("--out", "--resume") and not arg.startswith("--out="):
            kept.append(arg)
        skip = arg == "--out"
    return f"interrupted; continue with\n    {shlex.join(['python', 'train.py', *kept, '--resume', '--out', str(out)])}"


def export(trainer, path: Path, k: int) -> None:
    """train.py --eval-only's --export, from its `Trainer`: for every test case of the target domain, the user,
    the history the model reads (its last max_len items, oldest first), the ground truth, its rank under both
    protocols (the ranks of evaluation), and the k best-scored items with their scores (Eq. 8 for IFCDSR), as
    TSV with a header; items as ASINs."""
    scen, cfg, asins = trainer.scen, trainer.cfg, trainer.scen.items.asins
    ranks = trainer.rank("test")  # the evaluation's own ranks
    cases = trainer.targets[0].cases["test"][0]
    in_target = (scen.test.target >= scen.items.num_x) == (cfg.target == "Y")  # as evaluate.eval_cases selects
    users = [u for u, keep in zip(read_users(scen.path / SPLIT_FILES["test"]), in_target.tolist()) if keep]
    with trainer.exact():
        top, top_score = top_items(trainer.model.scorer(), cases, trainer.items, trainer.device,
                                   trainer.eval_batch(), k, scen.items.num_items)
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
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        s = read(parse_args(argv))
        if s.deterministic:  # cuBLAS needs its workspace fixed before its first call to be deterministic
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        return eval_only(s) if s.eval_only else run(s)
    except SystemExit as exit_:  # argparse has printed what is wrong (or the help)
        return exit_.code
    except (DataError, UsageError, ConfigError, OSError) as err:  # OSError: an unwritable folder, a full disk
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as err:  # an allocation that failed (torch.OutOfMemoryError too)
        if not isinstance(err, MemoryError) and not re.search(r"out of memory|can't allocate memory", str(err)):
            raise
        print(f"error: out of memory ({' '.join(str(err).split())[:200]}); lower batch_size, q, n_blocks or "
              f"max_len (--set FIELD=VALUE), or Config.score_chunk.", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        print(f"\n{interrupted(argv, getattr(interrupt, 'out', None))}", file=sys.stderr)
        return 130
    finally:  # --deterministic holds for this run only (main may be called again in the same process)
        torch.use_deterministic_algorithms(deterministic)


def stop(signum, frame):
    """SIGTERM stops a run as Ctrl-C does: temp files are removed, and finished files stay as they were."""
    raise KeyboardInterrupt


if __name__ == "__main__":
    safe_output()
    signal.signal(signal.SIGTERM, stop)
    sys.exit(main())
