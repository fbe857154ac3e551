"""The command line read once into `Settings`: the config (flags, --set, --literal, --grid), the seeds, the rows
(--models and its presets), and the checks that refuse a flag that cannot act, before any work."""
from __future__ import annotations

import argparse
import itertools
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

import report
from common import UsageError, bounded
from data import EMBEDDINGS_FILE, fetch_list
from ifcdsr import PRINTED, RANGES, Config, ConfigError
from rows import PRESETS, ROWS, needs_images, variant

DEMO_EPOCHS = 5  # the demo's default, so that `python train.py` ends within 3 minutes on 2 CPU cores
GRID = {"lr": [1e-3, 5e-4, 1e-4], "weight_decay": [1e-4, 5e-5, 1e-5]}  # paper §4's 3x3 grid: a bare --grid
NOT_GRIDDED = {  # Config fields that --grid refuses besides the per-training ones, and why
    "max_len": "the scenario's sequences are cut to max_len once a run; run one command per value "
               "(--set max_len=N)",
    "score_chunk": "it sets memory only: every value gives the same numbers; set it with --set score_chunk=N"}
MAX_SEEDS = 1000
TRAINING = ("epochs", "lr", "weight_decay", "batch_size", "patience", "eval_every", "seed", "seeds", "grid")
READINGS = ("temperature", "loss_norm", "softmax_over", "literal")  # IFCDSR's flags besides α, λ1, λ2
CONFLICTS = {  # pairs of flags refused together, and why
    ("scenario", "data_dir"): "--data-dir is the scenario folder itself",
    ("ablation", "no_image"): "--ablation trains Table 4's rows with and without images and views",
    ("ablation", "no_multi_attention"): "--ablation trains Table 4's rows with and without images and views",
    ("compare", "no_multi_attention"): "the IFCDSR rows without the three views are --models original,image_fusion",
    ("models", "no_multi_attention"): "the IFCDSR rows without the three views are --models original,image_fusion",
}


@dataclass(frozen=True)
class Settings:
    """What one command does, read once from its flags (`read`); every step receives the fields it uses."""
    cfg: Config  # every training's config, before its row's flags, its target and its seed
    grid: dict  # --grid: {field: [values]}, searched on validation; {} without --grid
    seeds: list  # the training seeds
    targets: tuple  # the target domains: ("X", "Y") for --target both
    models: str | None  # --models: a preset of rows.PRESETS or rows, comma-separated; None: the default rows
    no_image: bool  # --no-image
    no_multi_attention: bool  # --no-multi-attention
    scenario: str | None  # --scenario
    data_dir: str | None  # --data-dir
    device: torch.device
    out: str | None  # --out: the run folder; None: runs/<scenario>-<time>
    resume: bool  # --resume
    literal: bool  # --literal: the equations as printed, recorded in results.json
    deterministic: bool  # --deterministic
    eval_only: Path | None  # --eval-only CKPT
    export: Path | None  # --export FILE
    k: int  # --export's k
    given: tuple  # the flags on the command line (argparse's names), for the messages that name them


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line; `given` lists the flags given (argparse's names), whatever their values."""
    p = argparse.ArgumentParser(description="Train and evaluate IFCDSR and the baselines (README has the details).")
    p.add_argument("--scenario", help="demo (default), food_kitchen or movie_book")
    p.add_argument("--data-dir", help="any C2DSR-format scenario folder (overrides --scenario)")
    p.add_argument("--target", default="both", choices=("X", "Y", "both"), help="target domain of Eq. 7-9")
    p.add_argument("--models", help=f"rows to run, comma-separated: {', '.join(ROWS)}; or a preset: "
                                    f"{', '.join(PRESETS)}")
    p.add_argument("--compare", action="store_true",
                   help=f"--models compare, the rows of Tables 2/3: {','.join(PRESETS['compare'])}")
    p.add_argument("--seeds", help="K seeds (0..K-1) or a list a,b,c; every model is trained once per seed")
    p.add_argument("--no-image", action="store_true", help="ID branch only (α = 1)")
    p.add_argument("--no-multi-attention", action="store_true", help="only the merged view S^{X+Y}")
    p.add_argument("--ablation", action="store_true", help="--models ablation: train the three rows of Table 4")
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


def read(args) -> Settings:
    """The parsed command line as Settings, every flag checked before any work."""
    check_flags(args.given, args.eval_only)
    cfg = make_config(args)
    grid = parse_grid(args.grid, parse_sets(args.set), args.given, args.literal, cfg)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available; use --device cpu.")
    if sum(map(bool, (args.models, args.compare, args.ablation))) > 1:
        raise UsageError("give one of --models, --compare and --ablation.")
    return Settings(
        cfg=cfg, grid=grid, seeds=parse_seeds(args.seeds, args.seed),
        targets=("X", "Y") if args.target == "both" else (args.target,),
        models="compare" if args.compare else "ablation" if args.ablation else args.models,
        no_image=args.no_image, no_multi_attention=args.no_multi_attention, scenario=args.scenario,
        data_dir=args.data_dir, device=device, out=args.out, resume=args.resume, literal=args.literal,
        deterministic=args.deterministic, eval_only=Path(args.eval_only) if args.eval_only else None,
        export=Path(args.export) if args.export else None, k=args.k or 10, given=tuple(args.given))


def parse_seeds(seeds: str | None, seed: int | None) -> list[int]:
    """--seeds K (0..K-1) or a list a,b,c; --seed S alone is one seed; the default is seed 0."""
    if seeds is None:
        return [0 if seed is None else seed]
    if seed is not None:
        raise UsageError("give either --seed S or --seeds K|a,b,c, not both.")
    low, high = RANGES["seed"]
    expected = (f"expected a count K in [1, {MAX_SEEDS}] (seeds 0..K-1) or a list of at most {MAX_SEEDS} distinct "
                f"seeds in [{low}, {high:,}], like 0,3,7")
    try:
        chosen = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--seeds {seeds!r}: {expected}.") from None
    if "," not in seeds:
        chosen = list(range(chosen[0])) if len(chosen) == 1 and 1 <= chosen[0] <= MAX_SEEDS else []
    if not 1 <= len(chosen) <= MAX_SEEDS or not low <= min(chosen) <= max(chosen) <= high \
            or len(set(chosen)) != len(chosen):
        raise UsageError(f"--seeds {seeds!r}: {expected}.")
    return chosen


def choose_models(models: str | None, no_image: bool, no_multi_attention: bool, name: str,
                  has_images: bool) -> list[str]:
    """The rows to run, in the tables' order: those of --models (a preset or a list of rows); without it the
    default preset (on the demo scenario the demo's), whose IFCDSR row is the variant --no-image and
    --no-multi-attention ask for."""
    if models is None:
        preset = "demo" if name == "demo" and not (no_image or no_multi_attention) else "default"
        chosen = [variant(ROWS[m].use_image and not no_image, ROWS[m].multi_attention and not no_multi_attention)
                  if ROWS[m].ifcdsr else m for m in PRESETS[preset]]
        return [m for m in ROWS if m in chosen]
    chosen = PRESETS.get(models) or [m.strip() for m in models.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in ROWS]
    if unknown or not chosen:
        raise UsageError(f"--models {models!r}: " + (f"unknown model(s) {unknown}" if unknown else "names no model")
                         + f"; expected a comma-separated list of {', '.join(ROWS)}, or a preset "
                           f"({', '.join(PRESETS)}).")
    why = "--no-image" if no_image else f"the scenario has no {EMBEDDINGS_FILE}"
    if (no_image or not has_images) and models == "compare":
        if any(map(needs_images, chosen)):
            print(f"{why}: running only the rows that need no image embeddings", flush=True)
        chosen = [m for m in chosen if not needs_images(m)]
    elif (no_image or not has_images and models not in PRESETS) and any(map(needs_images, chosen)):
        raise UsageError(f"--models {','.join(m for m in chosen if needs_images(m))} need(s) image embeddings, "
                         f"but {why}. Build them (embed.py) or leave those rows out." + fetch_list(name))
    return [m for m in ROWS if m in chosen]


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_flags(given: list[str], eval_only: str | None) -> None:
    """Before any work: flags that cannot both act are refused, naming both."""
    if eval_only:
        dropped = [flag(k) for k in given
                   if k not in ("eval_only", "scenario", "data_dir", "device", "deterministic", "export", "k")]
        if dropped:
            raise UsageError(f"--eval-only evaluates the checkpoint as it was trained (its model, target, config "
                             f"and folder) and writes nothing but --export's file; drop {', '.join(dropped)}.")
    for (a, b), why in CONFLICTS.items():
        if a in given and b in given:
            raise UsageError(f"{flag(a)} and {flag(b)} cannot both act: {why}; drop one of them.")


def acts_on(models: list[str]) -> dict[str, list[str]]:
    """The rows of `models` that each flag acts on: --alpha on a row with images, λ1 and λ2 on one with the three
    views, the readings on an IFCDSR row, the training flags on a trained row. A Config field not named here
    (lr, q, dropout, ...) acts on every trained row (`rows_of`)."""
    trained = [m for m in models if ROWS[m].trained]
    ifcdsr = [m for m in trained if ROWS[m].ifcdsr]
    views = [m for m in ifcdsr if ROWS[m].multi_attention]
    return {"alpha": [m for m in ifcdsr if ROWS[m].use_image], "lambda1": views, "lambda2": views,
            **dict.fromkeys(READINGS, ifcdsr),
            **dict.fromkeys(TRAINING, trained)}


def rows_of(field: str, models: list[str]) -> list[str]:
    """The rows of `models` that a Config field (a --grid field) acts on."""
    return acts_on(models).get(field, [m for m in models if ROWS[m].trained])


def check_used(given: tuple, models: list[str], grid: dict) -> None:
    """Every flag given, and every field of --grid, acts on at least one of the rows run (`acts_on`)."""
    idle = [flag(k) for k, rows in acts_on(models).items() if k in given and not rows]
    idle += [f"--grid {k}" for k in grid if not rows_of(k, models) and "--grid" not in idle]
    if idle:
        chosen = next((flag(k) for k in ("models", "compare", "ablation", "no_image", "no_multi_attention")
                       if k in given), "the default rows")
        one = len(idle) == 1
        raise UsageError(f"{', '.join(idle)}: act{'s' if one else ''} on none of the rows of {chosen} "
                         f"({', '.join(models)}); drop {'it' if one else 'them'}, or choose rows "
                         f"{'it acts' if one else 'they act'} on with --models.")


def make_config(args) -> Config:
    """The config of the flags, --set and --literal, on top of Config's defaults (the demo's epochs on the demo)."""
    sets = parse_sets(args.set)
    overrides = {k: getattr(args, k) for k in ("epochs", "lr", "weight_decay", "alpha", "lambda1", "lambda2",
                                               "temperature", "batch_size", "patience", "eval_every", "loss_norm",
                                               "softmax_over")
                 if getattr(args, k) is not None}
    if args.epochs is None and "epochs" not in sets and args.data_dir is None and args.scenario in (None, "demo") \
            and not args.eval_only:
        overrides["epochs"] = DEMO_EPOCHS
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


def parse_grid(pairs: list[str] | None, sets: dict, given: list[str], literal: bool, cfg: Config) -> dict[str, list]:
    """--grid FIELD=V1,V2,... -> {field: [values]} in the order given ({} without --grid; a bare --grid is
    GRID, the paper's lr x L2 grid). Each value is typed as --set types it; every point of the grid (the
    product of the lists) is checked against Config's ranges on top of `cfg`. A field that the grid searches
    may not also be given by its flag, by --set or by --literal."""
    if pairs is None:
        return {}
    grid = {}
    for pair in pairs:
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
        why = "--grid searches lr and L2 itself (paper §4's 3x3 grid)" if not pairs else \
            f"--grid searches {field} itself ({report.grid_text({field: values})})"
        twice = [flag(field)] * (field in given) + [f"--set {field}"] * (field in sets) + \
            ["--literal"] * (literal and field in PRINTED)
        if twice:
            raise UsageError(f"--grid and {twice[0]} cannot both act: {why}; drop one of them.")
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

