"""Numbers a researcher can cite: a run's results assembled from its trainings, each seed's metrics aggregated
to mean ± std, a paired bootstrap of IFCDSR against every other row, the printed tables in the layout of the
paper's Tables 2, 3 and 4, --export's top items of each test case, a finished run's tables and learning
curves, and a comparison of finished runs that differ in their settings:

    python report.py RUN                                     # the tables train.py printed at the end of RUN
    python report.py plot RUN                                # RUN/curves.png: validation MRR and losses by epoch
    python report.py compare REFERENCE_RUN RUN [RUN ...]     # a Markdown table, paired against the reference
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from common import atomic_write, atomic_write_text, file_problem, safe_output
from data import SPLIT_FILES, read_users
from evaluate import PROTOCOLS, by_target, top_items
from rows import ROWS

LABELS = {name: row.label for name, row in ROWS.items()}  # the rows of the tables, in the paper's order
PAPER = {  # the paper's published rows: (MRR, NDCG@5, NDCG@10) of domain X, then of domain Y; Table 4's MRR
    "food_kitchen": {"names": ("Food", "Kitchen"), "table": "Table 2", "rows": {
        "GRU4Rec": (5.79, 5.48, 6.13, 3.06, 2.55, 3.10), "SASRec": (7.30, 6.90, 7.79, 3.79, 3.35, 3.93),
        "SR-GNN": (7.84, 7.58, 8.35, 4.01, 3.47, 4.13), "MIFN": (8.55, 8.28, 9.01, 4.09, 3.57, 4.29),
        "Tri-CDR": (8.35, 8.18, 8.89, 4.29, 3.63, 4.33), "IFCDSR": (9.05, 8.85, 9.92, 4.95, 4.56, 5.24)}},
    "movie_book": {"names": ("Movie", "Book"), "table": "Table 3", "rows": {
        "GRU4Rec": (3.83, 3.14, 3.73, 1.68, 1.34, 1.52), "SASRec": (3.79, 3.23, 3.69, 1.81, 1.41, 1.71),
        "SR-GNN": (3.85, 3.27, 3.78, 1.78, 1.40, 1.66), "PSJNet": (4.63, 4.06, 4.76, 2.44, 2.07, 2.35),
        "MIFN": (5.05, 4.21, 5.20, 2.51, 2.12, 2.31), "Tri-CDR": (5.15, 4.62, 5.05, 2.32, 2.08, 2.22),
        "IFCDSR": (6.08, 5.02, 5.86, 2.75, 2.37, 2.65)},
        "ablation": {"original": 5.03, "image_fusion": 5.63, "ifcdsr": 6.08}},
}
SHOWN = ("MRR", "NDCG@5", "NDCG@10", "HR@10")  # the columns of Tables 2/3, and HR@10
RESAMPLES, BOOTSTRAP_SEED = 1000, 0


def paper(name: str) -> dict | None:
    """The paper's entry for a scenario named like food_kitchen, Food-Kitchen, movie_book or Movie-Book."""
    return PAPER.get(name.lower().replace("-", "_"))


def domain_names(name: str) -> tuple[str, str]:
    return paper(name)["names"] if paper(name) else ("X", "Y")


# ----------------------------------------------------------------------------- seeds


def stats(values: list[float]) -> dict:
    """{"mean", "std" (sample std; None for one value), "n"}."""
    v = np.asarray(values, dtype=float)
    return {"mean": round(float(v.mean()), 4), "std": round(float(v.std(ddof=1)), 4) if len(v) > 1 else None,
            "n": len(v)}


def aggregate(per_seed: list[dict]) -> dict:
    """Nested dicts of the same shape, one per seed, with numbers at the leaves -> the same shape with
    `stats` at the leaves ("cases" counts, equal for every seed, are kept as they are; None stays None)."""
    first = per_seed[0]
    if isinstance(first, dict):
        return {k: (first[k] if k == "cases" else aggregate([s[k] for s in per_seed])) for k in first}
    return None if first is None else stats(per_seed)


# ----------------------------------------------------------------------------- significance


def paired_bootstrap(rr_ref: np.ndarray, rr_row: np.ndarray, resamples: int = RESAMPLES,
                     seed: int = BOOTSTRAP_SEED) -> dict:
    """MRR(ref) - MRR(row) in % from per-case reciprocal ranks of the same cases, with a 95% interval from
    `resamples` bootstrap resamples of the cases; significant when the interval excludes 0."""
    diff = 100 * (np.asarray(rr_ref, float) - np.asarray(rr_row, float))  # (S,) paired differences
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(axis=1)  # (resamples,)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"mrr_diff": round(float(diff.mean()), 4), "low": round(float(low), 4), "high": round(float(high), 4),
            "significant": bool(low > 0 or high < 0), "cases": len(diff), "resamples": resamples}


def significance(ranks: dict, reference: str) -> dict:
    """ranks {model: {domain: {protocol: [(S,) ranks, one per seed]}}} -> {model: {domain: {protocol:
    paired_bootstrap}}} for every model but the reference, each case's reciprocal rank averaged over seeds."""
    def rr(model, d, p):
        return torch.stack([1 / r for r in ranks[model][d][p]]).mean(0).numpy()  # (S,)

    return {m: {d: {p: paired_bootstrap(rr(reference, d, p), rr(m, d, p)) for p in PROTOCOLS}
                for d in ranks[m] if d in ranks[reference]}
            for m in ranks if m != reference}


# ----------------------------------------------------------------------------- a run's results


class RunResults:
    """A run's results.json and test ranks, gathered one row and seed at a time (`add`), then summarised
    (`finish`): mean ± std over the seeds, and the paired bootstrap of IFCDSR against every other row."""

    def __init__(self, header: dict, warm: torch.Tensor):
        self.results, self.warm = {**header, "runs": {}}, warm  # warm: evaluate.warm_items of the scenario
        self.ranks = {}  # {model: {domain: {protocol: [(S,) ranks, one per seed]}}}

    def add(self, model: str, seed: int | None, per_target: dict[str, dict]) -> None:
        """One row and seed, {target: its result}, as an entry of runs[model]: {key: {target: value}} of every
        key but the test ranks and cases, which give `ranks` and the cold/warm split `test_by_target`."""
        entry = {"seed": seed}
        for target, res in per_target.items():
            for key, value in res.items():
                if key == "ranks":
                    for p, r in value.items():
                        self.ranks.setdefault(model, {}).setdefault(target, {}).setdefault(p, []).append(r)
                elif key != "cases":
                    entry.setdefault(key, {})[target] = value
            entry.setdefault("test_by_target", {})
            for kind, part in by_target(res["ranks"], res["cases"], self.warm).items():
                entry["test_by_target"].setdefault(kind, {})[target] = part
        self.results["runs"].setdefault(model, []).append(entry)

    def finish(self) -> tuple[dict, dict]:
        """(results.json, test_ranks.npz's arrays): every test case's rank under the key
        `<model>/<seed>/<domain>/<protocol>`, popularity's under seed None."""
        runs = self.results["runs"]
        self.results["summary"] = {m: {k: aggregate([e[k] for e in entries])
                                       for k in ("valid", "test", "test_by_target")} for m, entries in runs.items()}
        reference = next((m for m in ("ifcdsr", "ifcdsr_id") if m in runs), None)
        self.results["significance"] = {"reference": reference,
                                        "rows": significance(self.ranks, reference) if reference else {}}
        arrays = {}
        for m, by_domain in self.ranks.items():
            for d, by_protocol in by_domain.items():
                arrays.update({f"{m}/{e['seed']}/{d}/{p}": r.numpy() for p, per_seed in by_protocol.items()
                               for e, r in zip(runs[m], per_seed)})
        return self.results, arrays


# ----------------------------------------------------------------------------- tables


def cell(s: dict | None, width: int = 13, mark: str = "") -> str:
    if s is None:
        return "-".rjust(width)
    text = f"{s['mean']:.2f}" + (f" ± {s['std']:.2f}" if s["std"] is not None else "") + mark
    return text.rjust(width)


def print_tables(name: str, summary: dict, sig: dict, reference: str | None, seeds: list) -> None:
    """Tables 2/3: one table per protocol, mean ± std over seeds, * where IFCDSR's difference is significant;
    under each, MRR of the cases with a cold and a warm target, and the paired intervals."""
    names, entry, models = domain_names(name), paper(name), [m for m in LABELS if m in summary]
    domains = [d for d in ("X", "Y") if any(d in summary[m]["test"] for m in models)]
    over = f"mean ± std over {len(seeds)} seeds" if len(seeds) > 1 else f"seed {seeds[0]}"
    for p in PROTOCOLS:
        title = {"sampled999": "999 sampled negatives (as C2DSR evaluates; the paper names no protocol)",
                 "full": "full ranking of the target domain"}[p]
        head = f"{'Model (' + '-'.join(names) + ')':<24}" + "".join(
            f" | {(m + ' (' + names['XY'.index(d)] + ')') if m == 'MRR' else m:>15}" for d in domains for m in SHOWN)
        print(f"\nTest set, {title}; %, {over}\n{head}\n{'-' * len(head)}")
        for m in models:
            line = f"{LABELS[m]:<24}"
            for d in domains:
                res = summary[m]["test"].get(d)
                for metric in SHOWN:
                    star = " *" if metric == "MRR" and sig.get(m, {}).get(d, {}).get(p, {}).get("significant") else ""
                    line += " | " + cell(res[p][metric] if res else None, 15, star)
            print(line)
        if entry and p == "sampled999":
            print(f"The paper's {entry['table']} (its own split of the data: not comparable number for number):")
            for label, row in entry["rows"].items():
                values = [f"{v:.2f}" for v in row]
                cells = [values[0], values[1], values[2], "-", values[3], values[4], values[5], "-"]
                print(f"{'  ' + label + ' (paper)':<24}" + "".join(
                    f" | {c:>15}" for c, d in zip(cells, ("X",) * 4 + ("Y",) * 4) if d in domains))
        print_cold_warm(summary, models, domains, names, p)
        if reference:
            print_significance(sig, reference, models, domains, names, p)


def print_cold_warm(summary: dict, models: list, domains: list, names: tuple, p: str) -> None:
    """MRR of the test cases whose target never occurs in training (cold) and of the others (warm)."""
    first = summary[models[-1]]["test_by_target"]
    head = f"{'MRR by target':<24}" + "".join(
        f" | {kind + ' ' + names['XY'.index(d)] + ' (' + str(first[kind][d]['cases']) + ')':>19}"
        for d in domains for kind in ("cold", "warm"))
    print(f"{head}\n{'-' * len(head)}")
    for m in models:
        by = summary[m]["test_by_target"]
        print(f"{LABELS[m]:<24}" + "".join(
            " | " + cell(by[kind][d][p]["MRR"] if d in by[kind] and by[kind][d][p] else None, 19)
            for d in domains for kind in ("cold", "warm")))


def print_significance(sig: dict, reference: str, models: list, domains: list, names: tuple, p: str) -> None:
    head = f"{LABELS[reference] + ' - row':<24}" + "".join(
        f" | {'MRR ' + names['XY'.index(d)] + ', 95% interval':>28}" for d in domains)
    print(f"{head}\n{'-' * len(head)}")
    for m in models:
        if m == reference:
            continue
        cells = []
        for d in domains:
            s = sig[m].get(d, {}).get(p)
            cells.append("-" if s is None else f"{s['mrr_diff']:+.2f} [{s['low']:+.2f}, {s['high']:+.2f}]"
                                               + (" *" if s["significant"] else "  "))
        print((f"{LABELS[m]:<24}" + "".join(f" | {c:>28}" for c in cells)).rstrip())
    print(f"(* the paired bootstrap interval excludes 0: {RESAMPLES:,} resamples of the test cases, each case's "
          f"reciprocal rank averaged over the seeds)")


def print_ablation(name: str, summary: dict) -> None:
    """Table 4: MRR (999 sampled negatives) of each ablation row, mean ± std over seeds."""
    marks = {"original": ("✓", " ", " "), "image_fusion": ("✓", "✓", " "), "ifcdsr": ("✓", "✓", "✓")}
    names, entry = domain_names(name), (paper(name) or {}).get("ablation")
    head = (f"{'original-framework':>18} | {'image fusion':>12} | {'multiple attention':>18} | "
            + " | ".join(f"{'MRR (' + n + ')':>15}" for n in names) + (f" | MRR ({names[0]}, paper)" if entry else ""))
    print(f"\nTable 4 (ablation, test set, 999 sampled negatives, %)\n{head}\n{'-' * len(head)}")
    for variant, row in marks.items():
        line = " | ".join(f"{m:>{w}}" for m, w in zip(row, (18, 12, 18)))
        for d in ("X", "Y"):
            res = summary[variant]["test"].get(d)
            line += " | " + cell(res["sampled999"]["MRR"] if res else None, 15)
        print(line + (f" | {entry[variant]:>{len(names[0]) + 13}.2f}" if entry else ""))


def value_text(value) -> str:
    """A --grid value as --set reads it: true/false for a bool, Python's shortest form for a number."""
    return {True: "true", False: "false"}[value] if isinstance(value, bool) else str(value)


def point_name(values: dict) -> str:
    """A grid point's values, `temperature=0.1,lr=0.001`: its folder's name and its label in the printouts."""
    return ",".join(f"{k}={value_text(v)}" for k, v in values.items())


def grid_text(grid: dict) -> str:
    """--grid's lists as the command line gives them: `temperature=1.0,0.1 lr=0.001,0.0005`."""
    return " ".join(f"{k}={','.join(map(value_text, values))}" for k, values in grid.items())


def print_chosen(results: dict) -> None:
    """With --grid: per row, target domain and seed, the grid point that validation chose and its validation MRR
    ("the only point" for a row that no field of the grid acts on)."""
    rows = []  # (row, target, one cell per seed)
    for model, entries in results["runs"].items():
        for d in entries[0].get("chosen", {}):  # popularity trains at no point
            kept = [next(p for p in e["grid"][d] if p["values"] == e["chosen"][d]) for e in entries]
            rows.append((LABELS[model], d, [f"{point_name(p['values']) or 'the only point'} "
                                            f"({p['valid_sampled999_MRR']:.2f})" for p in kept]))
    seeds = [f"seed {s}" for s in results["seeds"]]
    widths = [max([len(h)] + [len(r[2][i]) for r in rows]) for i, h in enumerate(seeds)]
    head = f"{'Row':<24} | target | " + " | ".join(f"{h:<{w}}" for h, w in zip(seeds, widths))
    print(f"\nGrid points chosen on validation MRR (999 sampled negatives, %) of --grid {grid_text(results['grid'])}; "
          f"a tie keeps the first point\n{head.rstrip()}\n{'-' * len(head)}")
    for label, d, cells in rows:
        print(f"{label:<24} | {d:<6} | " + " | ".join(f"{c:<{w}}" for c, w in zip(cells, widths)).rstrip())


def print_run(results: dict) -> None:
    """The tables that end a run of train.py, from its results.json: Tables 2/3, Table 4 when the run holds its
    three rows, and with --grid the point each row used."""
    sig = results["significance"]
    print_tables(results["scenario"], results["summary"], sig["rows"], sig["reference"], results["seeds"])
    if all(m in results["summary"] for m in ("original", "image_fusion", "ifcdsr")):
        print_ablation(results["scenario"], results["summary"])
    if "grid" in results:
        print_chosen(results)


def export(trainer, path: Path, k: int) -> None:
    """train.py --eval-only's --export, from its `Trainer`: for every test case of the target domain, the user,
    the history the model reads (its last max_len items, oldest first), the ground truth, its rank under both
    protocols (the ranks of evaluation), and the k best-scored items with their scores (Eq. 8 for IFCDSR), as
    TSV with a header; items as ASINs."""
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


# ----------------------------------------------------------------------------- learning curves

VIEW_NAMES = {"x": "$L^X$", "y": "$L^Y$", "xy": "$L^{X+Y}$"}  # Eq. 6's losses, in matplotlib's TeX


def plot(folder: Path) -> Path:
    """<folder>/curves.png: one row per trained model and target domain; validation MRR under both protocols,
    then each view's training loss, by epoch; one colour per seed, a star at the selected epoch."""
    try:
        import matplotlib
        matplotlib.use("Agg")  # files only, no window
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        raise RunError("report.py plot needs matplotlib, an optional dependency: pip install matplotlib") from None
    results, _ = read_run(folder)
    rows = [(m, d) for m, runs in results["runs"].items() if "history" in runs[0] for d in runs[0]["history"]]
    if not rows:
        raise RunError(f"{folder}: the run trained no model (popularity only): there are no curves to plot.")
    views = [v for v in VIEW_NAMES if any(v in results["runs"][m][0]["history"][d][0]["loss"] for m, d in rows)]
    fig, axes = plt.subplots(len(rows), 1 + len(views), figsize=(3.4 * (1 + len(views)), 2.4 * len(rows)),
                             squeeze=False)
    for (model, d), (mrr, *losses) in zip(rows, axes):
        for i, run in enumerate(results["runs"][model]):
            history, best, seed = run["history"][d], run["best_epoch"][d], run["seed"]
            for p, style in zip(PROTOCOLS, ("-", "--")):
                points = [(h["epoch"], h["valid"][p]["MRR"]) for h in history if "valid" in h]
                mrr.plot(*zip(*points), style, color=f"C{i}", label=f"{p}, seed {seed}")
            chosen = [h["valid"][PROTOCOLS[0]]["MRR"] for h in history if h["epoch"] == best]
            mrr.plot([best], chosen, "*", color=f"C{i}", markersize=12, label="selected epoch" if i == 0 else None)
            for view, ax in zip(views, losses):
                if view in history[0]["loss"]:
                    ax.plot([h["epoch"] for h in history], [h["loss"][view] for h in history], color=f"C{i}")
        mrr.set_title(f"{LABELS[model]}, target {domain_names(results['scenario'])['XY'.index(d)]}: "
                      f"valid MRR (%)", fontsize=9)
        mrr.legend(fontsize=7)
        for view, ax in zip(views, losses):
            ax.set_title(f"training loss {VIEW_NAMES[view]} (Eq. 6)", fontsize=9)
            if not ax.lines:
                ax.set_axis_off()  # a model without this view (a baseline, or the merged view alone)
        for ax in (mrr, *losses):
            ax.set_xlabel("epoch", fontsize=8)
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    fig.tight_layout()
    out = folder / "curves.png"
    atomic_write(out, lambda f: fig.savefig(f, format="png", dpi=72))
    plt.close(fig)
    return out


# ----------------------------------------------------------------------------- runs against a reference run


class RunError(Exception):
    """A run folder that cannot be compared: the message says why."""


def read_run(folder: Path) -> tuple[dict, dict]:
    """(results.json, test ranks {key: (S,) array}) of a finished run folder of train.py."""
    try:
        for name in ("results.json", "test_ranks.npz"):
            problem = file_problem(folder / name)  # a FIFO would block the read, /dev/zero fill memory
            if problem:
                raise OSError(f"{folder / name}: {problem}")
        results = json.loads((folder / "results.json").read_text())
        with np.load(folder / "test_ranks.npz", allow_pickle=False) as npz:
            ranks = {key: npz[key] for key in npz.files}
    except (OSError, ValueError) as err:
        raise RunError(f"{folder}: not a finished run of train.py ({err}).") from None
    if isinstance(results, dict) and "summary" not in results:
        raise RunError(f"{folder}: the run has not finished (results.json has no summary); resume it first.")
    return results, ranks


NUMBER = (int, float)


def at(results: dict, folder: Path, *keys, kind):
    """results[k1][k2]... of a run's results.json, of type `kind`; a hand-edited or foreign file whose key is
    missing or of another type is a RunError that names the key and the expected type."""
    value = results
    for i, key in enumerate(keys):
        inside = key in value if isinstance(value, dict) else (isinstance(value, list) and isinstance(key, int)
                                                                and key < len(value))
        if not inside:
            where = "/".join(map(str, keys[:i])) or "the top level"
            raise RunError(f"{folder / 'results.json'}: {where} has no key {key!r}; not a results.json that "
                           f"train.py wrote.")
        value = value[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) or not isinstance(value, kinds):
        expected = " or ".join(dict.fromkeys({dict: "an object", list: "a list", str: "a string", int: "a number",
                                              float: "a number", type(None): "null"}[k] for k in kinds))
        raise RunError(f"{folder / 'results.json'}: {'/'.join(map(str, keys))} should be {expected}, found "
                       f"{json.dumps(value)[:80]}; not a results.json that train.py wrote.")
    return value


def mrr_cell(res: dict, folder: Path, model: str, split: str, d: str, p: str) -> str:
    s = {k: at(res, folder, "summary", model, split, d, p, "MRR", k, kind=kinds)
         for k, kinds in (("mean", NUMBER), ("std", NUMBER + (type(None),)))}
    return cell(s, 0).strip()


def seeds(res: dict, folder: Path, model: str) -> list:
    """The seeds of a model's entries in a run: popularity's one entry has seed None."""
    return [at(res, folder, "runs", model, i, "seed", kind=(int, type(None)))
            for i in range(len(at(res, folder, "runs", model, kind=list)))]


def compare(reference: Path, runs: list[Path]) -> str:
    """A Markdown table: for every run (the reference first), model and target domain, validation and test MRR
    (mean ± std over the seeds) under both protocols, and the paired bootstrap of the run's test MRR minus the
    reference's (each case's reciprocal rank averaged over the seeds, as in `significance`)."""
    ref, ref_ranks = read_run(reference)
    head = ("| run | model | target | valid MRR, 999 | valid MRR, full | test MRR, 999 | test MRR, full "
            "| test − reference, 999 | test − reference, full |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for folder in [reference, *runs]:
        res, ranks = (ref, ref_ranks) if folder is reference else read_run(folder)
        if at(res, folder, "data_sha256", kind=str) != at(ref, reference, "data_sha256", kind=str):
            raise RunError(f"{folder}: trained on other data than {reference}; only runs of the same data pair up.")
        for model in at(res, folder, "summary", kind=dict):
            for d in at(res, folder, "summary", model, "test", kind=dict):
                cells = [mrr_cell(res, folder, model, split, d, p) for split in ("valid", "test") for p in PROTOCOLS]
                for p in PROTOCOLS:
                    if folder is reference:
                        cells.append("(reference)")
                        continue
                    rr = [np.mean([1 / r[f"{model}/{seed}/{d}/{p}"] for seed in seeds(run, path, model)], axis=0)
                          for r, run, path in ((ranks, res, folder), (ref_ranks, ref, reference))]
                    b = paired_bootstrap(*rr)
                    cells.append(f"{b['mrr_diff']:+.2f} [{b['low']:+.2f}, {b['high']:+.2f}]"
                                 + (" *" if b["significant"] else ""))
                lines.append(f"| {folder.name} | {model} | {d} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] not in ("compare", "plot", "tables") and not argv[0].startswith("-"):
        argv = ["tables", *argv]  # python report.py RUN
    parser = argparse.ArgumentParser(prog="report.py", description="Tables and curves of finished runs of "
                                     "train.py: report.py RUN reprints a run's tables.")
    commands = parser.add_subparsers(dest="command", required=True)
    t = commands.add_parser("tables", help="the tables train.py printed at the end of the run (report.py RUN)")
    t.add_argument("run", type=Path, help="a run folder of train.py")
    g = commands.add_parser("plot", help="the learning curves of a run, written to RUN/curves.png")
    g.add_argument("run", type=Path, help="a run folder of train.py")
    c = commands.add_parser("compare", help="runs that differ in their settings, paired against a reference run")
    c.add_argument("reference", type=Path, help="the reference run folder (its test ranks pair up with the others)")
    c.add_argument("runs", type=Path, nargs="+", help="run folders of the same data, models, targets and seeds")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse has printed what is wrong (or the help)
        return exit_.code
    try:
        if args.command == "tables":
            print_run(read_run(args.run)[0])
        elif args.command == "plot":
            print(f"wrote {plot(args.run)}")
        else:
            print(compare(args.reference, args.runs))
    except (RunError, KeyError, OSError) as err:  # OSError: a run folder that cannot be written (plot)
        print(f"error: {err}" if isinstance(err, (RunError, OSError)) else
              f"error: the runs do not hold the same models, targets and seeds (missing {err})"
              if args.command == "compare" else
              f"error: {args.run / 'results.json'} has no {err}: not a results file of this version of train.py",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    safe_output()
    sys.exit(main())
