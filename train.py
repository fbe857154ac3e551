"""Train and evaluate IFCDSR and the baselines: the loop, model selection on validation, the run over rows × seeds
× target domains, and the command (settings.py reads its flags, rows.py lists its rows).

    python train.py                                  # the generated demo scenario, about 2 minutes on a CPU
    python train.py --scenario movie_book            # data/Movie-Book, both target domains (Table 3)
    python train.py --data-dir DIR --compare --seeds 3   # Tables 2/3 with the baselines, mean ± std, significance
    python train.py --eval-only RUN/ifcdsr/seed0/best_X.pt --export top.tsv   # each test user's top 10 items
"""
from __future__ import annotations

import contextlib
import itertools
import math
import os
import random
import signal
import sys
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path

import numpy as np
import torch

import baselines
import report
import settings
from checkpoints import (CHECKPOINT, RESUME, Checkpoints, check_checkpoint, check_same_run, checkpoint_config,
                         checkpoint_data, host_copy, load_checkpoint, load_weights)
from common import Progress, UsageError, duration, safe_output
from data import EMBEDDINGS_FILE, DataError, Scenario, Views, load_scenario, resolve_scenario
from data_checks import check_cases, data_warnings
from evaluate import (PROTOCOLS, NonFiniteScores, eval_batch, eval_cases, metrics, negatives, rank_cases,
                      target_items, to_device, warm_items)
from ifcdsr import CPU_CHUNK, IFCDSR, Config, host_to, shapes
from rows import ROWS, needs_images
from run_folder import Interrupted, check_run_folder, interrupted, lock_run_folder, output_folder, save_run
from settings import Settings

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


class Trainer:
    """One model for one target domain and one seed: train with early stopping on validation, then test once.

    With `share`, another target domain's Trainer of the same row and seed, this one trains nothing of its own:
    it follows `share`'s model, optimiser and batch order (`fit`'s twins), and keeps its own target domain's
    validation, early stopping, checkpoints and test.
    """

    def __init__(self, name: str, cfg: Config, scen: Scenario, device: torch.device, folder: Path, resume: bool,
                 share: Trainer | None = None):
        self.name, self.cfg, self.scen, self.device = name, cfg, scen, device
        self.last = folder / f"last_{cfg.target}.pt"
        self.best = folder / f"best_{cfg.target}.pt"
        if share is None:
            set_seed(cfg.seed)  # the seed sets the initialisation and the order of the batches
            self.model = build_model(name, cfg, scen).to(device)
            # Note: the paper's "L2 regularization coefficient" is Adam's weight_decay (L2 added to the gradient),
            # not decoupled weight decay (AdamW); C2DSR, whose settings §4 adopts, applies none. On CUDA one
            # fused kernel updates all parameters (the same update)
            self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                        fused=True if device.type == "cuda" else None)
            self.shuffle = torch.Generator().manual_seed(cfg.seed)
        else:
            self.model, self.opt, self.shuffle = share.model, share.opt, share.shuffle
        self.epoch, self.best_valid, self.bad, self.history = 0, -1.0, 0, []
        self.items, self.cases, self.resident = target_items(scen, cfg.target), {}, None
        self.checkpoints = Checkpoints()
        if resume and self.last.is_file():
            self._restore(load_checkpoint(self.last), training=share is None)
        folder.mkdir(parents=True, exist_ok=True)

    def _state(self) -> dict:
        return {"model_name": self.name, "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "config": asdict(self.cfg), "scenario": self.scen.name, "data_dir": str(self.scen.path),
                "data_sha256": self.scen.data_sha256, "images_sha256": self.scen.images_sha256,
                "num_x": self.scen.items.num_x, "num_y": self.scen.items.num_y, "epoch": self.epoch,
                "best_valid": self.best_valid, "bad": self.bad, "history": self.history,
                "rng": {"torch": torch.get_rng_state(), "shuffle": self.shuffle.get_state(),
                        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}}

    def _restore(self, state: dict, training: bool = True) -> None:
        """A last_*.pt's schedule and, with `training` (not for a twin, which shares another's), its weights,
        optimiser and random states."""
        check_checkpoint(state, self.scen, self.last)
        check_same_run(state, self.name, self.cfg, self.last)
        if not RESUME <= state.keys():
            raise UsageError(f"{self.last}: holds no training state (missing {sorted(RESUME - state.keys())}); "
                             f"resume needs the last_*.pt that train.py writes, or start a new run with another --out.")
        self.epoch, self.best_valid, self.bad, self.history = (
            state[k] for k in ("epoch", "best_valid", "bad", "history"))
        print(f"  resumed from {self.last} after epoch {self.epoch}", flush=True)
        if not training:
            return
        load_weights(self.model, state, self.last)  # E_img is not stored: it is the data's
        self.opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"])
        self.shuffle.set_state(state["rng"]["shuffle"])
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])

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
        views = [self.model.view] if ROWS[self.name].baseline else list(self.cfg.view_weights())  # the loss's parts
        order = torch.randperm(len(data), generator=self.shuffle)
        n_batches = math.ceil(len(data) / self.cfg.batch_size)
        sums, pending = torch.zeros(len(views), device=self.device), None
        progress = Progress(f"    epoch {self.epoch + 1}", len(data), "sequences")
        for b in range(n_batches):
            parts = self.step(*self.batch(order[b * self.cfg.batch_size:(b + 1) * self.cfg.batch_size]))
            self.check_losses(pending, views, n_batches)
            pending = b, host_copy(parts)  # on CUDA queued into page-locked memory, with an event
            sums += parts
            progress.update(min((b + 1) * self.cfg.batch_size, len(data)))
        self.check_losses(pending, views, n_batches)
        progress.close()
        return {"loss": dict(zip(views, (sums / n_batches).tolist())),
                "seq_per_s": len(data) / (time.monotonic() - progress.start)}

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

    def running(self) -> bool:
        return self.epoch < self.cfg.epochs and self.bad < self.cfg.patience

    def fit(self, log_prefix: str = "", twins: tuple[Trainer, ...] = ()) -> None:
        """Train until cfg.epochs or early stopping; the best checkpoint is the epoch of the best validation MRR.
        `twins` (Trainers made with share=self, at this one's epoch) follow the same training, each validated
        on its own target domain; it goes on while any of them has not stopped, and a stopped one keeps its
        files as they were, the files a training of its own would have written.

        Note: the paper trains 100 epochs; here training also stops after `patience` evaluations without a
        better validation MRR, and the epoch with the best one is kept: model selection on validation only.
        """
        group = (self, *twins)
        try:
            self.epochs(group, log_prefix, time.time())
            for trainer in group:
                trainer.checkpoints.wait()  # every file on disk before anything reads them
        except BaseException:  # the files being written are finished (or left as they were) before the error goes on
            for trainer in group:
                trainer.checkpoints.wait(raise_error=False)
            raise

    @staticmethod
    def epochs(group: tuple[Trainer, ...], log_prefix: str, t0: float) -> None:
        """`fit`'s loop: an epoch of the group's one training, then each running Trainer's validation,
        checkpoints and part of the log line, until every schedule ends."""
        while running := [trainer for trainer in group if trainer.running()]:
            row = running[0].train_epoch()
            losses = " ".join(f"L^{ {'x': 'X', 'y': 'Y', 'xy': 'X+Y'}[k]} {v:.4f}" for k, v in row["loss"].items())
            valid = "".join(trainer.end_epoch(dict(row), len(group) > 1) for trainer in running)
            print(f"{log_prefix}epoch {running[0].epoch:3d} | {losses}{valid} | {row['seq_per_s']:.0f} seq/s | "
                  f"{time.strftime('%H:%M:%S', time.gmtime(time.time() - t0))}", flush=True)

    def end_epoch(self, row: dict, named: bool) -> str:
        """An epoch trained: its validation (on the epoch of evaluations), the best checkpoint when it is the
        best so far, the last one always, written while the next epoch trains -> the log line's part, with the
        target domain when `named`."""
        cfg, writes = self.cfg, {}
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
        self.checkpoints.write(writes)
        if "valid" not in row:
            return ""
        return (f" | {cfg.target + ' ' if named else ''}valid MRR {row['valid']['sampled999']['MRR']:.2f} NDCG@10 "
                f"{row['valid']['sampled999']['NDCG@10']:.2f}")

    def load_best(self) -> dict:
        state = load_checkpoint(self.best)
        self.model.load_state_dict(state["model"])
        return state


# ----------------------------------------------------------------------------- runs


class RunProgress:
    """The run's trainings, one per model (popularity needs none), seed, target domain (one for all of them for a
    `rows.Row.shared` row) and grid point: their count and the CPU threads in the header, then `training i of n`
    and, once one has trained, the run's ETA from the trainings that trained in this command (a resumed run's
    finished ones, read back, do not count)."""

    def __init__(self, models: list[str], seeds: list[int], targets: tuple, grid: dict):
        points = {m: len(grid_points(m, grid)) for m in models if ROWS[m].trained}
        shared = [m for m in points if len(target_groups(m, targets)) < len(targets)]
        self.n = sum(n * len(seeds) * len(target_groups(m, targets)) for m, n in points.items())
        self.i, self.trained, self.spent, self.started = 0, 0, 0.0, 0.0
        each = "; grid points: " + ", ".join(f"{m} {n}" for m, n in points.items()) if grid else ""
        once = f"; {', '.join(shared)}: one training for both targets" if shared else ""
        print(f"trainings: {self.n} ({len(points)} model(s) x {len(seeds)} seed(s) x {len(targets)} target(s)"
              f"{each}{once}); {torch.get_num_threads()} CPU threads (OMP_NUM_THREADS sets them)", flush=True)

    def start(self, prefix: str) -> None:
        self.i += 1
        self.started = time.monotonic()
        per = self.spent / self.trained if self.trained else None
        eta = f"; run ETA {duration(per * (self.n - self.i + 1))} ({duration(per)} a training)" if per else ""
        print(f"\n{prefix}training {self.i} of {self.n}{eta}", flush=True)

    def done(self, trained: bool) -> None:
        """The training started last has ended; `trained`: it ran an epoch (not only read back)."""
        if trained:
            self.trained += 1
            self.spent += time.monotonic() - self.started


def train_row(name: str, cfgs: dict[str, Config], scen: Scenario, device, folder: Path, grid: dict, resume: bool,
              progress: RunProgress, label: str) -> dict[str, dict]:
    """One row and seed for the target domains of `cfgs` (target -> config): trained at each of its grid points
    (once without --grid), each target domain keeping the point with its best validation MRR, then its test set
    ranked once, with that point's best checkpoint. A row whose training is the same for every target domain
    (`rows.Row.shared`) trains once at each point for all of them."""
    results = {}
    for targets in target_groups(name, cfgs):
        points, best = {target: [] for target in targets}, {}
        for point, sub in trainings(name, grid, folder):
            prefix = f"[{label} {'+'.join(targets)}{' ' + report.point_name(point) if point else ''}] "
            trainers = train_point(name, {t: cfgs[t].replace(**point) for t in targets}, scen, device, sub, resume,
                                   progress, prefix)
            for target, trainer in trainers.items():
                points[target].append({"values": point, "valid_" + "_".join(SELECT): trainer.best_valid,
                                       "folder": str(sub)})
                # Note: a tie on validation keeps the first of the tied points, in the grid's order (the order of
                # --grid's fields and values)
                if target not in best or trainer.best_valid > best[target][1].best_valid:
                    best[target] = point, trainer
        for target in targets:
            results[target] = tested(*best[target], points[target] if grid else None)
    return results


def target_groups(name: str, targets) -> list[list[str]]:
    """The target domains that train together: all of them in one training for a `rows.Row.shared` row, else
    each in its own."""
    return [list(targets)] if ROWS[name].shared else [[target] for target in targets]


def tested(chosen: dict, trainer: Trainer, points: list | None) -> dict:
    """A training's result: its best checkpoint's test ranks, with the grid's points and the chosen one."""
    state = trainer.load_best()
    ranks = trainer.rank("test")  # the only time the test set is read
    result = {"config": state["config"], "best_epoch": state["epoch"], "checkpoint": str(trainer.best),
              "history": trainer.history, "valid": state["valid"], "test": metrics(ranks), "ranks": ranks,
              "cases": trainer.cases["test"][0]}
    if points is not None:
        result["grid"], result["chosen"] = points, chosen
    return result


def train_point(name: str, cfgs: dict[str, Config], scen: Scenario, device, folder: Path, resume: bool,
                progress: RunProgress, prefix: str) -> dict[str, Trainer]:
    """One training (a grid point's, or the row's) for the target domains of `cfgs`, each continued from its
    last checkpoint with --resume; the first domain's Trainer trains, the others follow it as twins. A twin
    still to train whose checkpoint is at another epoch (a run stopped between two files' writes) trains on
    its own after."""
    progress.start(prefix)
    first, *rest = cfgs
    lead = Trainer(name, cfgs[first], scen, device, folder, resume)
    twins = {target: Trainer(name, cfgs[target], scen, device, folder, resume, share=lead) for target in rest}
    trains = any(trainer.running() for trainer in (lead, *twins.values()))  # not only read back
    apart = {target for target, twin in twins.items() if twin.running() and twin.epoch != lead.epoch}
    lead.fit(prefix, tuple(twin for target, twin in twins.items() if target not in apart))
    for target in apart:
        twins[target] = Trainer(name, cfgs[target], scen, device, folder, resume)
        twins[target].fit(prefix)
    progress.done(trains)
    return {first: lead, **twins}


def grid_points(name: str, grid: dict) -> list[dict]:
    """The distinct points at which row `name` trains: the product of the lists of the --grid fields that act
    on it, in the order given; one empty point without --grid, or where no field of it acts on the row."""
    lists = {k: v for k, v in grid.items() if settings.rows_of(k, [name])}
    return [dict(zip(lists, values)) for values in itertools.product(*lists.values())]


def trainings(name: str, grid: dict, folder: Path) -> list[tuple[dict, Path]]:
    """The trainings of one row and seed: (point, folder) of each of its grid points, the folder named after
    the point's values (`lr=0.001,weight_decay=0.0001`); without one, the row's own."""
    return [(point, folder / report.point_name(point) if point else folder) for point in grid_points(name, grid)]


def model_config(model: str, cfg: Config, target: str, seed: int) -> Config:
    """The config of one training of a row: its flags (`rows.Row.flags`), the target domain and the seed."""
    return cfg.replace(**ROWS[model].flags(), target=target, seed=seed)


def row_folder(out: Path, model: str, seed: int) -> Path:
    return out / model / f"seed{seed}"


def run(s: Settings) -> int:
    """The rows, seeds and target domains of a run, each trained (or ranked) into the run folder; then
    results.json, test_ranks.npz and the tables. A Ctrl-C from the run folder on names it."""
    name, folder = resolve_scenario(s.scenario, s.data_dir)
    models = settings.choose_models(s.models, s.no_image, s.no_multi_attention, name,
                                    (folder / EMBEDDINGS_FILE).exists())
    settings.check_used(s.given, models, s.grid)
    out = output_folder(s.out, name, s.resume)
    try:
        return train_rows(s, name, folder, models, out)
    except KeyboardInterrupt as interrupt:
        raise Interrupted(out) from interrupt


def train_rows(s: Settings, name: str, folder: Path, models: list[str], out: Path) -> int:
    """Every row × seed × target domain of the run, then its results, written whole, and its tables."""
    scen = load_scenario(folder, max_len=s.cfg.max_len, name=name, use_images=any(map(needs_images, models)))
    check_cases(scen, s.targets)
    lock = lock_run_folder(out, s.resume)  # held until the run ends (its file closes then, or when the process does)
    if s.resume:  # everything that can refuse a --resume, before anything is written
        check_run_folder(out, scen, planned(s, models, out))
    print(f"scenario {name} ({folder}): |X| = {scen.items.num_x}, |Y| = {scen.items.num_y}, "
          f"{len(scen.train)} train / {len(scen.valid)} valid / {len(scen.test)} test sequences; "
          f"device {s.device}; models {', '.join(models)}; seeds {', '.join(map(str, s.seeds))}; output {out}\n"
          f"readings: {settings.readings(s.cfg)}" + (f"; --grid {report.grid_text(s.grid)}, chosen per row on "
                                                      f"validation" if s.grid else ""), flush=True)
    print("".join(f"warning: {note}\n" for note in data_warnings(scen, s.targets)), end="", flush=True)
    result = partial(row_result, s=s, scen=scen, out=out, progress=RunProgress(models, s.seeds, s.targets, s.grid))
    collected = report.RunResults({
        "scenario": name, "data_dir": str(folder), "data_sha256": scen.data_sha256, "config": asdict(s.cfg),
        "literal": s.literal, "deterministic": s.deterministic, "models": models, "seeds": s.seeds,
        **({"grid": s.grid} if s.grid else {})}, warm_items(scen))
    for model in models:
        for seed in s.seeds if ROWS[model].trained else [None]:
            collected.add(model, seed, result(model, seed))
    results, ranks = collected.finish()
    save_run(out, results, ranks)
    lock.close()
    report.print_run(results)  # the same as `python report.py RUN`
    print(f"\nresults: {out / 'results.json'}")
    return 0


def row_result(model: str, seed: int | None, s: Settings, scen: Scenario, out: Path,
               progress: RunProgress) -> dict[str, dict]:
    """One row and seed, for each target domain: popularity ranked, or the row trained (at each grid point) and
    tested."""
    if not ROWS[model].trained:
        batch = eval_batch(s.cfg.score_chunk or CPU_CHUNK, scen.items.num_items)
        return {target: baselines.popularity(scen, target, batch) for target in s.targets}
    return train_row(model, {target: model_config(model, s.cfg, target, seed) for target in s.targets}, scen,
                     s.device, row_folder(out, model, seed), s.grid, s.resume, progress, f"{model} seed {seed}")


def planned(s: Settings, models: list[str], out: Path) -> dict[Path, tuple[str, Config]]:
    """The last_*.pt files that this command continues: path -> (row, config) of every training of the run."""
    plan = {}
    for model, seed, target in itertools.product([m for m in models if ROWS[m].trained], s.seeds, s.targets):
        cfg = model_config(model, s.cfg, target, seed)
        for point, sub in trainings(model, s.grid, row_folder(out, model, seed)):
            plan[sub / f"last_{target}.pt"] = model, cfg.replace(**point)
    return plan


def eval_only(s: Settings) -> int:
    """--eval-only: a checkpoint's validation and test metrics, as it was trained; with --export its top-k items."""
    path = s.eval_only
    state = load_checkpoint(path)
    cfg = checkpoint_config(state, path)
    name, folder = checkpoint_data(s.scenario, s.data_dir, state, path)
    scen = load_scenario(folder, max_len=cfg.max_len, use_images=cfg.use_image, name=name)
    check_checkpoint(state, scen, path)
    check_cases(scen, (cfg.target,))
    trainer = Trainer(state["model_name"], cfg, scen, s.device, path.parent, resume=False)
    load_weights(trainer.model, state, path)
    for split in ("valid", "test"):
        res = trainer.evaluate(split)
        print(f"{split} ({state['model_name']}, {cfg.target}, epoch {state['epoch']}): " + ", ".join(
            f"{p}: " + " ".join(f"{m} {v:.2f}" for m, v in res[p].items()) for p in PROTOCOLS))
    if s.export:
        report.export(trainer, s.export, s.k)
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = settings.parse_args(argv)
    except SystemExit as exit_:  # argparse has printed what is wrong (or the help)
        return exit_.code
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        s = settings.read(args)
        if s.deterministic:  # cuBLAS needs its workspace fixed before its first call to be deterministic
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        return eval_only(s) if s.eval_only else run(s)
    except (DataError, UsageError, OSError) as err:  # OSError: a folder that cannot be written, a full disk
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        print(f"\n{interrupted(argv, interrupt.out if isinstance(interrupt, Interrupted) else None)}", file=sys.stderr)
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
