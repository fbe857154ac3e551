"""A finished run's tables and learning curves, and a comparison of finished runs that differ in their settings:

    python -m tools.report RUN                                     # the tables train.py printed at the end of RUN
    python -m tools.report plot RUN                                # RUN/curves.png: validation MRR and losses by epoch
    python -m tools.report compare REFERENCE_RUN RUN [RUN ...]     # a Markdown table, paired against the reference
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from data import atomic_write, file_problem
from evaluate import LABELS, PROTOCOLS, cell, paired_bootstrap, paper, print_run
from train import safe_output

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
    except Exception as err:  # not installed, or a broken install that fails its import in its own way
        raise RunError(f"python -m tools.report plot needs matplotlib, an optional dependency, and its import failed "
                       f"({type(err).__name__}: {err}): pip install matplotlib") from None
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
        mrr.set_title(f"{LABELS[model]}, target {paper(results['scenario'])['names']['XY'.index(d)]}: "
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
    except RecursionError:  # json's parser recurses once per level of nesting
        raise RunError(f"{folder / 'results.json'}: nested too deeply to be a results.json that train.py wrote; "
                       f"not a finished run of train.py.") from None
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
    return cell(s)


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
        argv = ["tables", *argv]  # python -m tools.report RUN
    parser = argparse.ArgumentParser(prog="python -m tools.report", description="Tables and curves of finished runs of "
                                     "train.py: python -m tools.report RUN reprints a run's tables.")
    commands = parser.add_subparsers(dest="command", required=True)
    t = commands.add_parser("tables", help="the tables train.py printed at the end of the run (python -m tools.report RUN)")
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
    except (RunError, OSError) as err:  # OSError: a run folder that cannot be written (plot)
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as err:  # a hand-edited or foreign file
        found = f"missing {err}" if isinstance(err, KeyError) else f"{type(err).__name__}: {err}"
        print(f"error: the runs do not hold the same models, targets and seeds ({found})" if args.command == "compare"
              else f"error: {args.run / 'results.json'}: not a results file of this version of train.py ({found})",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    safe_output()
    sys.exit(main())
