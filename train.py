"""Train and evaluate IFCDSR: the loop, the evaluation protocols and the command line.

    python train.py                          # the generated demo scenario, a few minutes on a CPU
    python train.py --scenario movie_book    # data/Movie-Book, both target domains (Table 3)
    python train.py --scenario movie_book --ablation   # the three rows of Table 4
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

import ifcdsr
from common import Progress, atomic_write, atomic_write_text, moved
from data import DataError, EvalSet, Scenario, Views, load_scenario, resolve_scenario
from ifcdsr import IFCDSR, Config

METRICS = ("MRR", "NDCG@5", "NDCG@10", "HR@1", "HR@5", "HR@10")
PROTOCOLS = ("sampled999", "full")  # C2DSR's 999 sampled negatives; full ranking of the target domain
SELECT = ("sampled999", "MRR")  # the validation number that selects epochs and hyper-parameters
NUM_NEGATIVES = 999
DEMO_EPOCHS = 5  # the demo's default, so that `python train.py` ends within 3 minutes on 2 CPU cores
GRID = [(lr, wd) for lr in (1e-3, 5e-4, 1e-4) for wd in (1e-4, 5e-5, 1e-5)]  # paper §4
VARIANTS = {  # Table 4 rows and the ID-only switch: (use_image, multi_attention)
    "original": (False, False),  # original framework: ID only, one merged representation
    "image_fusion": (True, False),  # + image fusion
    "full": (True, True),  # + multiple attention = IFCDSR
    "id_only": (False, True),  # --no-image
}
PAPER = {  # IFCDSR's published rows: (MRR, NDCG@5, NDCG@10) per domain, Table 4 MRR on Movie
    "food_kitchen": {"names": ("Food", "Kitchen"), "table": "Table 2",
                     "X": (9.05, 8.85, 9.92), "Y": (4.95, 4.56, 5.24)},
    "movie_book": {"names": ("Movie", "Book"), "table": "Table 3",
                   "X": (6.08, 5.02, 5.86), "Y": (2.75, 2.37, 2.65),
                   "ablation": {"original": 5.03, "image_fusion": 5.63, "full": 6.08}},
}


class UsageError(Exception):
    """A bad command line or checkpoint; the message says what to do."""


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def save(obj, path: Path) -> None:
    """results.json or a checkpoint, written whole or not at all."""
    if path.suffix == ".json":
        atomic_write_text(path, json.dumps(obj, indent=1))
    else:
        atomic_write(path, lambda f: torch.save(obj, f))


def eval_batch(cfg: Config, N: int) -> int:
    """Cases scored at once in evaluation: (batch, N) scores within `score_chunk`, at most 1024."""
    return max(1, min(1024, cfg.score_chunk // N))


# ----------------------------------------------------------------------------- evaluation


def domain_items(scen: Scenario, domain: str) -> slice:
    return ifcdsr.domain_items(domain, scen.items.num_x, scen.items.num_items)


def eval_cases(split: EvalSet, scen: Scenario, domain: str) -> EvalSet:
    """The cases whose ground truth lies in `domain` (domain Y iff id >= |X|)."""
    is_y = split.target >= scen.items.num_x
    return split.subset(is_y if domain == "Y" else ~is_y)


def negatives(cases: EvalSet, items: slice, seed: int, split: str, target: str) -> torch.Tensor:
    """999 negatives per case, uniform over the target domain without the ground truth (C2DSR), drawn
    once per (seed, split, target) -> (S, 999) local item indices."""
    rng = np.random.default_rng([seed, ("valid", "test").index(split), ("X", "Y").index(target)])
    n = items.stop - items.start
    # Note: with replacement, as C2DSR's evaluation draws them; a case may meet the same negative twice
    local = rng.integers(0, n - 1, size=(len(cases), NUM_NEGATIVES))
    target = (cases.target - items.start).numpy()[:, None]
    return torch.from_numpy(local + (local >= target))  # skip over the ground truth


def rank_metrics(rank: torch.Tensor) -> dict[str, float]:
    """rank (S,) 1-based -> MRR, NDCG@k, HR@k in %."""
    rank = rank.double()
    out = {"MRR": (1 / rank).mean()}
    for k in (5, 10):
        out[f"NDCG@{k}"] = torch.where(rank <= k, 1 / torch.log2(rank + 1), 0.0).mean()
    for k in (1, 5, 10):
        out[f"HR@{k}"] = (rank <= k).double().mean()
    return {m: round(100 * out[m].item(), 4) for m in METRICS}


def to_device(batch: Views, device) -> Views:
    """A batch of views to the device; to CUDA through pinned memory, without blocking the host."""
    if torch.device(device).type != "cuda":
        return batch.to(device)
    return Views(*(v.pin_memory() for v in (batch.x, batch.y, batch.xy))).to(device, non_blocking=True)


@torch.no_grad()
def evaluate(score_fn, cases: EvalSet, items: slice, neg: torch.Tensor, device, batch: int) -> dict:
    """Rank the ground truth (Eq. 9: among target-domain items only) under both protocols.
    Rank = 1 + the number of candidates scoring strictly higher."""
    ranks = {p: [] for p in PROTOCOLS}
    above = torch.empty(min(batch, len(cases)), items.stop - items.start, device=device)  # reused: see below
    for i in range(0, len(cases), batch):
        s = score_fn(to_device(cases.history[i:i + batch], device), items)  # (B, |target domain|)
        t = (cases.target[i:i + batch] - items.start).to(device)
        s_t = s.gather(1, t[:, None])  # (B, 1)
        # counted as 0/1 floats in a reused buffer: summing a new bool tensor is several times slower
        ranks["full"].append(1 + torch.gt(s, s_t, out=above[:len(t)]).sum(1))
        ranks["sampled999"].append(1 + (s.gather(1, neg[i:i + batch].to(device)) > s_t).sum(1))
    return {p: rank_metrics(torch.cat(r).cpu()) for p, r in ranks.items()}


def popularity_scores(scen: Scenario) -> torch.Tensor:
    """Training interaction counts per item: the popularity baseline's score."""
    # the inputs plus the last target of each sequence hold every training interaction once
    items = torch.cat([scen.train.inputs.xy, scen.train.targets.xy[:, -1:]], dim=1)  # (S, L+1)
    return torch.bincount(items.flatten(), minlength=scen.items.num_items + 1)[:-1].float()


# ----------------------------------------------------------------------------- training


class Trainer:
    """One model for one target domain: train with early stopping on validation, then test once."""

    def __init__(self, cfg: Config, scen: Scenario, device: torch.device, folder: Path, resume: bool):
        self.cfg, self.scen, self.device = cfg, scen, device
        self.last = folder / f"last_{cfg.target}.pt"
        self.best = folder / f"best_{cfg.target}.pt"
        folder.mkdir(parents=True, exist_ok=True)
        set_seed(cfg.seed)
        E_img = scen.E_img if cfg.use_image else None
        self.model = IFCDSR(cfg, scen.items.num_x, scen.items.num_y, E_img).to(device)
        # Note: the paper's "L2 regularization coefficient" is Adam's weight_decay (L2 added to the gradient, as
        # in C2DSR), not decoupled weight decay (AdamW)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.shuffle = torch.Generator().manual_seed(cfg.seed)
        self.epoch, self.best_valid, self.bad, self.history = 0, -1.0, 0, []
        self.items, self.cases = domain_items(scen, cfg.target), {}
        if resume and self.last.is_file():
            self._restore(torch.load(self.last, map_location=device, weights_only=False))

    def _state(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(), "config": asdict(self.cfg),
                "scenario": self.scen.name, "num_x": self.scen.items.num_x, "num_y": self.scen.items.num_y,
                "epoch": self.epoch, "best_valid": self.best_valid, "bad": self.bad, "history": self.history,
                "rng": {"torch": torch.get_rng_state(), "shuffle": self.shuffle.get_state(),
                        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}}

    def _restore(self, state: dict) -> None:
        check_checkpoint(state, self.scen, self.last)
        schedule = ("epochs", "patience", "eval_every")  # these may change: e.g. train a finished run longer
        differs = sorted(k for k, v in asdict(self.cfg).items() if k not in schedule and state["config"].get(k) != v)
        if differs:
            raise UsageError(f"{self.last}: was written with a different config ({', '.join(differs)}); resume "
                             f"with the same flags (only --epochs, --patience, --eval-every may change), or "
                             f"start a new run with another --out.")
        self.model.load_state_dict(state["model"])  # E_img is not stored: it is the data's
        self.opt.load_state_dict(state["optimizer"])
        self.epoch, self.best_valid, self.bad, self.history = (state[k] for k in ("epoch", "best_valid", "bad", "history"))
        torch.set_rng_state(state["rng"]["torch"])
        self.shuffle.set_state(state["rng"]["shuffle"])
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        print(f"  resumed from {self.last} after epoch {self.epoch}", flush=True)

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    def evaluate(self, split: str) -> dict:
        """Metrics on the valid or test cases of this target domain, under both protocols."""
        if split not in self.cases:
            cases = eval_cases(getattr(self.scen, split), self.scen, self.cfg.target)
            self.cases[split] = cases, negatives(cases, self.items, self.cfg.seed, split, self.cfg.target)
        cases, neg = self.cases[split]
        self.model.eval()
        with self.autocast():
            return evaluate(self.model.score, cases, self.items, neg, self.device, eval_batch(self.cfg, self.model.N))

    def train_epoch(self) -> dict:
        self.model.train()
        data = self.scen.train
        order = torch.randperm(len(data), generator=self.shuffle)
        sums, n_batches = {}, math.ceil(len(data) / self.cfg.batch_size)
        progress = Progress(f"    epoch {self.epoch + 1}", len(data), "sequences")
        for b in range(n_batches):
            idx = order[b * self.cfg.batch_size:(b + 1) * self.cfg.batch_size]
            inputs, targets = to_device(data.inputs[idx], self.device), to_device(data.targets[idx], self.device)
            with self.autocast():
                loss, parts = self.model.loss(inputs, targets)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            progress.update(min((b + 1) * self.cfg.batch_size, len(data)))
        progress.close()
        return {"loss": {k: v / n_batches for k, v in sums.items()},
                "seq_per_s": len(data) / (time.monotonic() - progress.start)}

    def fit(self, log_prefix: str = "") -> None:
        cfg, t0 = self.cfg, time.time()
        while self.epoch < cfg.epochs and self.bad < cfg.patience:
            row = self.train_epoch()
            self.epoch += 1
            row["epoch"] = self.epoch
            if self.epoch % cfg.eval_every == 0 or self.epoch == cfg.epochs:
                row["valid"] = self.evaluate("valid")
                score = row["valid"][SELECT[0]][SELECT[1]]
                if score > self.best_valid:
                    self.best_valid, self.bad = score, 0
                    save({**self._state(), "valid": row["valid"]}, self.best)
                else:
                    self.bad += 1
            self.history.append(row)
            save(self._state(), self.last)
            losses = " ".join(f"L^{ {'x': 'X', 'y': 'Y', 'xy': 'X+Y'}[k]} {v:.4f}" for k, v in row["loss"].items())
            valid = (f" | valid MRR {row['valid']['sampled999']['MRR']:.2f} NDCG@10 "
                     f"{row['valid']['sampled999']['NDCG@10']:.2f}") if "valid" in row else ""
            print(f"{log_prefix}epoch {self.epoch:3d} | {losses}{valid} | {row['seq_per_s']:.0f} seq/s | "
                  f"{time.strftime('%H:%M:%S', time.gmtime(time.time() - t0))}", flush=True)

    def load_best(self) -> dict:
        state = torch.load(self.best, map_location=self.device, weights_only=False)
        self.model.load_state_dict(state["model"])
        return state


def check_checkpoint(state: dict, scen: Scenario, path: Path) -> None:
    if (state.get("num_x"), state.get("num_y")) != (scen.items.num_x, scen.items.num_y):
        raise UsageError(f"{path}: checkpoint of scenario {state.get('scenario')!r} with "
                         f"{state.get('num_x')}+{state.get('num_y')} items; this scenario ({scen.name}) has "
                         f"{scen.items.num_x}+{scen.items.num_y}. Pass the scenario it was trained on.")


# ----------------------------------------------------------------------------- runs and reports


def train_target(cfg: Config, scen: Scenario, device, folder: Path, args, prefix: str) -> dict:
    """Train (over the lr x L2 grid with --grid), select on validation, then score the test set once."""
    points = GRID if args.grid else [(cfg.lr, cfg.weight_decay)]
    grid, best = [], None
    for i, (lr, wd) in enumerate(points):
        run_cfg = cfg.replace(lr=lr, weight_decay=wd)
        sub = folder / f"grid{i}" if args.grid else folder
        if args.grid:
            print(f"{prefix}grid point {i + 1}/{len(points)}: lr {lr:g}, L2 {wd:g}", flush=True)
        trainer = Trainer(run_cfg, scen, device, sub, args.resume)
        trainer.fit(prefix)
        grid.append({"lr": lr, "weight_decay": wd, "valid_" + "_".join(SELECT): trainer.best_valid,
                     "folder": str(sub)})
        if best is None or trainer.best_valid > best.best_valid:
            best = trainer
    state = best.load_best()
    result = {"config": state["config"], "best_epoch": state["epoch"], "checkpoint": str(best.best),
              "history": best.history, "valid": state["valid"], "test": best.evaluate("test")}
    if args.grid:
        result["grid"] = grid
    return result


def popularity(scen: Scenario, target: str, cfg: Config) -> dict:
    scores = popularity_scores(scen)
    cases, items = eval_cases(scen.test, scen, target), domain_items(scen, target)
    neg = negatives(cases, items, cfg.seed, "test", target)
    return evaluate(lambda h, items: scores[items].expand(h.xy.shape[0], -1), cases, items, neg, "cpu",
                    eval_batch(cfg, scen.items.num_items))


def domain_names(name: str) -> tuple[str, str]:
    return PAPER[name]["names"] if name in PAPER else ("X", "Y")


def print_tables(name: str, rows: list[tuple[str, dict]]) -> None:
    """Tables 2/3 layout; each cell is 'sampled-999 / full ranking' in %."""
    names = domain_names(name)
    for metrics in (("MRR", "NDCG@5", "NDCG@10"), ("HR@1", "HR@5", "HR@10")):
        head = f"{'Model (' + '-'.join(names) + ')':<28}"
        for d, dn in zip(("X", "Y"), names):
            head += "".join(f" | {(m + ' (' + dn + ')') if m == metrics[0] else m:>15}" for m in metrics)
        print(f"\n{head}\n{'-' * len(head)}")
        for label, res in rows:
            line = f"{label:<28}"
            for d in ("X", "Y"):
                for m in metrics:
                    line += f" | {(f'{res[d][PROTOCOLS[0]][m]:.2f} / {res[d][PROTOCOLS[1]][m]:.2f}' if d in res else '-'):>15}"
            print(line)
        if name in PAPER and metrics[0] == "MRR":
            paper = PAPER[name]
            cells = [f"{v:.2f}".rjust(15) for d in ("X", "Y") for v in paper[d]]
            print(f"{'IFCDSR (paper, ' + paper['table'] + ')':<28}" + "".join(" | " + c for c in cells))
    print("(test set, %; each cell: 999 sampled negatives / full ranking of the target domain)")


def print_ablation(name: str, results: dict) -> None:
    """Table 4 layout: MRR (sampled-999) of each ablation row."""
    labels = {"original": ("✓", " ", " "), "image_fusion": ("✓", "✓", " "), "full": ("✓", "✓", "✓")}
    names = domain_names(name)
    paper = PAPER.get(name, {}).get("ablation")
    head = (f"{'original-framework':>18} | {'image fusion':>12} | {'multiple attention':>18} | "
            + " | ".join(f"MRR ({n})" for n in names) + (f" | MRR ({names[0]}, paper)" if paper else ""))
    print(f"\nTable 4 (ablation, test set, 999 sampled negatives, %)\n{head}\n{'-' * len(head)}")
    for variant, marks in labels.items():
        line = " | ".join(f"{m:>{w}}" for m, w in zip(marks, (18, 12, 18)))
        for d, n in zip(("X", "Y"), names):
            res = results[variant]["test"].get(d)
            line += f" | {(f'{res[PROTOCOLS[0]][SELECT[1]]:.2f}' if res else '-'):>{len(f'MRR ({n})')}}"
        print(line + (f" | {paper[variant]:>{len(names[0]) + 13}.2f}" if paper else ""))


def parse_args(argv):
    p = argparse.ArgumentParser(description="Train and evaluate IFCDSR (README has the details).")
    p.add_argument("--scenario", default="demo", help="demo (default), food_kitchen or movie_book")
    p.add_argument("--data-dir", help="any C2DSR-format scenario folder (overrides --scenario)")
    p.add_argument("--target", default="both", choices=("X", "Y", "both"), help="target domain of Eq. 7-9")
    p.add_argument("--no-image", action="store_true", help="ID branch only (α = 1)")
    p.add_argument("--no-multi-attention", action="store_true", help="only the merged view S^{X+Y}")
    p.add_argument("--ablation", action="store_true", help="train the three rows of Table 4")
    p.add_argument("--grid", action="store_true", help="the paper's 3x3 lr x L2 grid, selected on validation")
    for flag, kind, what in (("--epochs", int, "epochs"), ("--lr", float, "learning rate"),
                             ("--weight-decay", float, "L2 coefficient"), ("--alpha", float, "α (Eq. 5)"),
                             ("--lambda1", float, "λ1 (Eq. 7/8)"), ("--lambda2", float, "λ2 (Eq. 7/8)"),
                             ("--temperature", float, "τ dividing Eq. 2; 1 = the paper literally"),
                             ("--batch-size", int, "mini-batch size"), ("--patience", int, "early stopping"),
                             ("--eval-every", int, "validate every N epochs"), ("--seed", int, "the one seed")):
        p.add_argument(flag, type=kind, help=f"{what} (default: see ifcdsr.Config)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--out", help="output folder (default runs/<scenario>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out (or the latest)")
    p.add_argument("--eval-only", metavar="CKPT", help="evaluate a best_*.pt checkpoint on valid and test")
    return p.parse_args(argv)


def make_config(args) -> Config:
    if args.epochs is None and args.data_dir is None and args.scenario == "demo" and not args.eval_only:
        args.epochs = DEMO_EPOCHS
    overrides = {k: getattr(args, k) for k in ("epochs", "lr", "weight_decay", "alpha", "lambda1", "lambda2",
                                               "temperature", "batch_size", "patience", "eval_every", "seed")
                 if getattr(args, k) is not None}
    try:
        return Config().replace(**overrides)
    except ValueError as err:
        raise UsageError(str(err)) from None


def choose_variants(args, name: str) -> list[str]:
    if args.ablation:
        return ["original", "image_fusion", "full"]
    if args.no_image or args.no_multi_attention:
        return [{(True, False): "id_only", (False, True): "image_fusion", (True, True): "original"}[
            (args.no_image, args.no_multi_attention)]]
    # Note: on the demo, the default run also trains the ID-only model, to show what the images add
    return ["id_only", "full"] if name == "demo" else ["full"]


def output_folder(args, name: str) -> Path:
    if args.out is None and args.resume:
        found = sorted(Path("runs").glob(f"{name}-*"))
        if not found:
            raise UsageError(f"--resume: no earlier run of {name} under runs/; pass --out DIR.")
        return found[-1]
    out = Path(args.out or f"runs/{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    if out.exists() and any(out.iterdir()) and not args.resume:
        raise UsageError(f"{out} already holds a run; pass --resume to continue it, or another --out.")
    return out


def eval_only(args, cfg_cli: Config, device) -> int:
    path = Path(args.eval_only)
    if not path.is_file():
        raise UsageError(f"{path}: checkpoint not found.")
    try:
        state = torch.load(path, map_location=device, weights_only=False)
        cfg = Config(**state["config"])
    except Exception as err:  # any unreadable file is reported, not raised
        raise UsageError(f"{path}: not an IFCDSR checkpoint ({type(err).__name__}: {err}).") from None
    name, folder = resolve_scenario(args.scenario, args.data_dir, cfg_cli.seed)
    scen = load_scenario(folder, max_len=cfg.max_len, use_images=cfg.use_image, name=name)
    check_checkpoint(state, scen, path)
    trainer = Trainer(cfg, scen, device, path.parent, resume=False)
    try:
        trainer.model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise UsageError(f"{path}: its weights do not fit this model ({str(err).splitlines()[0]}).") from None
    for split in ("valid", "test"):
        res = trainer.evaluate(split)
        print(f"{split} ({cfg.target}, epoch {state['epoch']}): " + ", ".join(
            f"{p}: " + " ".join(f"{m} {v:.2f}" for m, v in res[p].items()) for p in PROTOCOLS))
    return 0


def run(args) -> int:
    cfg = make_config(args)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available; use --device cpu.")
    if args.eval_only:
        return eval_only(args, cfg, device)
    name, folder = resolve_scenario(args.scenario, args.data_dir, cfg.seed)
    variants = choose_variants(args, name)
    scen = load_scenario(folder, max_len=cfg.max_len, name=name,
                         use_images=any(VARIANTS[v][0] for v in variants))
    out = output_folder(args, name)
    out.mkdir(parents=True, exist_ok=True)
    targets = ("X", "Y") if args.target == "both" else (args.target,)
    print(f"scenario {name} ({folder}): |X| = {scen.items.num_x}, |Y| = {scen.items.num_y}, "
          f"{len(scen.train)} train / {len(scen.valid)} valid / {len(scen.test)} test sequences; "
          f"device {device}; output {out}", flush=True)

    results = {"scenario": name, "data_dir": str(folder), "config": asdict(cfg), "variants": variants,
               "popularity": {t: popularity(scen, t, cfg) for t in targets}, "runs": {}}
    for variant in variants:
        use_image, multi = VARIANTS[variant]
        results["runs"][variant] = {"history": {}, "valid": {}, "test": {}, "best_epoch": {}, "config": {}}
        for target in targets:
            run_cfg = cfg.replace(use_image=use_image, multi_attention=multi, target=target)
            prefix = f"[{variant} {target}] "
            print(f"\n{prefix}training ({'image + ID' if use_image else 'ID only'}, "
                  f"{'three views' if multi else 'merged view only'})", flush=True)
            res = train_target(run_cfg, scen, device, out / variant if len(variants) > 1 else out, args, prefix)
            r = results["runs"][variant]
            for key in ("history", "valid", "test", "best_epoch", "config"):
                r[key][target] = res[key]
            if "grid" in res:
                r.setdefault("grid", {})[target] = res["grid"]
            save(results, out / "results.json")
    main_run = results["runs"][variants[-1]]
    results.update({k: main_run[k] for k in ("history", "valid", "test")})
    save(results, out / "results.json")

    labels = {"original": "ID only, merged view", "image_fusion": "+ image fusion", "id_only": "IFCDSR ID only",
              "full": "IFCDSR"}
    print_tables(name, [("Popularity", results["popularity"])]
                 + [(labels[v] + " (this run)", results["runs"][v]["test"]) for v in variants])
    if args.ablation:
        print_ablation(name, results["runs"])
    print(f"\nresults: {out / 'results.json'}")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--benchmark" in argv:
        return moved("python train.py --benchmark", "python benchmark.py")
    args = parse_args(argv)
    try:
        return run(args)
    except (DataError, UsageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; continue with the same command plus --resume (and --out of this run)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
