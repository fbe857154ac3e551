"""The evaluation protocols (cases, candidates, fair ranks, metrics, cold and warm targets), a scenario's checks
before a run, and a run's numbers: mean ± std over seeds, IFCDSR's paired bootstrap against every other row, and the
tables of the paper's Tables 2-4. A model scores each case, a ground truth in the target domain, by `score_fn(history,
items, shape)` -> (B, |items|) scores of that domain's items (Eq. 9). Dimensions: S cases, B a batch, n items."""
import functools

import numpy as np
import torch

import ifcdsr
from data import EMBEDDINGS_FILE, SPLIT_FILES, DataError, EvalSet, Scenario, Views, item_counts

METRICS = ("MRR", "NDCG@5", "NDCG@10", "HR@1", "HR@5", "HR@10")
PROTOCOLS = ("sampled999", "full")  # C2DSR's 999 sampled negatives; full ranking of the target domain
NUM_NEGATIVES, NEGATIVE_SEED = 999, 0  # the negatives come from this one seed, whatever the training seed


class NonFiniteScores(ValueError):
    """A model scored a candidate NaN or ±inf: no rank, and no metric, can be computed from that."""


def eval_batch(chunk: int, N: int) -> int:
    """Cases scored at once in evaluation: (batch, N) scores within `chunk` (`IFCDSR.chunk()`), at most 1024."""
    return max(1, min(1024, chunk // N))


def target_items(scen: Scenario, target: str) -> slice:
    """The global ids of the target domain's items in the scenario, the candidates of Eq. 9."""
    return ifcdsr.domain_items(target, scen.items.num_x, scen.items.num_items)


def eval_cases(split: EvalSet, scen: Scenario, domain: str) -> EvalSet:
    """The cases whose ground truth lies in `domain` (domain Y iff id >= |X|)."""
    in_domain = (split.target >= scen.items.num_x) == (domain == "Y")
    return EvalSet(split.history[in_domain], split.target[in_domain])


def negatives(cases: EvalSet, items: slice, split: str, target: str) -> torch.Tensor:
    """(S, 999) local item indices: each case's negatives, uniform over the target domain but its ground truth.
    Note: drawn from NEGATIVE_SEED per (split, target), not the training seed: every model and seed meets the same
    candidates (`significance` pairs them); with replacement, as C2DSR draws them, so a case may meet one twice."""
    rng = np.random.default_rng([NEGATIVE_SEED, ("valid", "test").index(split), ("X", "Y").index(target)])
    local = rng.integers(0, items.stop - items.start - 1, size=(len(cases), NUM_NEGATIVES))
    return torch.from_numpy(local + (local >= (cases.target - items.start).numpy()[:, None]))  # skips the ground truth


def metrics(ranks: dict) -> dict:
    """{protocol: (S,) 1-based ranks} -> {protocol: {metric: mean over the cases in %}, or None for no cases}."""
    def of(r: torch.Tensor) -> dict | None:  # r (S,) float64
        gain = {"MRR": 1 / r, "NDCG": 1 / torch.log2(r + 1), "HR": torch.ones_like(r)}  # (S,) each
        return {m: round(100 * (gain[name] * (r <= float(k or "inf"))).mean().item(), 4)
                for m in METRICS for name, _, k in [m.partition("@")]} if len(r) else None
    return {p: of(r.double()) for p, r in ranks.items()}


def to_device(batch: Views, device) -> Views:
    """A batch of views to the device; to CUDA through pinned memory, without blocking the host."""
    return Views(*(ifcdsr.host_to(device, v) for v in (batch.x, batch.y, batch.xy)))


@torch.no_grad()
def rank_cases(score_fn, cases: EvalSet, items: slice, neg: torch.Tensor, device, batch: int, pad=None) -> dict:
    """{protocol: (S,) float64 ranks} of each case's ground truth among the target domain's items (Eq. 9), `batch` at a
    time on the device, one host wait per pass; `shape`: `ifcdsr.shapes` by `pad` or None; NaN/inf: NonFiniteScores."""
    resident = on_device(cases, items, neg, device, batch)
    done = [rank_batch(score_fn, cases, resident, items, slice(i, i + batch), pad)
            for i in range(0, len(cases), batch)]
    if done and not torch.stack([finite for *_, finite in done]).all():
        check_finite(score_fn, resident[0], cases, items, batch, pad)
    return {p: torch.cat([r[k] for r in done] or [torch.empty(0)]).double().cpu() for k, p in enumerate(PROTOCOLS)}


def on_device(cases: EvalSet, items: slice, neg: torch.Tensor, device, batch: int) -> tuple:
    """A pass's inputs on the device: histories, local ground truths, negatives, a reused (batch, n) buffer."""
    return (to_device(cases.history, device), ifcdsr.host_to(device, cases.target - items.start),
            ifcdsr.host_to(device, neg), torch.empty(min(batch, len(cases)), items.stop - items.start, device=device))


def rank_batch(score_fn, cases: EvalSet, resident: tuple, items: slice, b: slice, pad: int | None) -> tuple:
    """The cases `b`, with no host wait: ((B,) sampled999 ranks, (B,) full ranks, whether their scores' sum is finite).
    Note: rank = 1 + (candidates scoring strictly higher) + ½·(others scoring the same), the expected rank under a
    random tie-break; C2DSR counts a tie (within 1e-5) as a win, flattering popularity (every unseen item scores 0)."""
    history, target, neg, flags = resident
    s = score_batch(score_fn, history, cases, items, b, pad)  # (B, n)
    s_t, s_neg = s.gather(1, target[b, None]), s.gather(1, neg[b])  # (B, 1), (B, 999)
    higher = torch.gt(s, s_t, out=flags[:len(s)]).sum(1)  # (B,) 0/1 floats in a reused buffer: summing bools is slower
    tied = torch.ge(s, s_t, out=flags[:len(s)]).sum(1) - higher - 1  # (B,) the ground truth ties itself
    return 1 + (s_neg > s_t).sum(1) + (s_neg == s_t).sum(1) / 2, 1 + higher + tied / 2, s.sum().isfinite()


def score_batch(score_fn, history: Views, cases: EvalSet, items: slice, b: slice, pad: int | None) -> torch.Tensor:
    """(B, |items|) fp32 scores of the cases `b` (`history` on the device), their shapes from the CPU copy `cases`."""
    return score_fn(history[b], items, None if pad is None else ifcdsr.shapes(pad, cases.history[b])).float()


def check_finite(score_fn, history: Views, cases: EvalSet, items: slice, batch: int, pad: int | None) -> None:
    """Scores each batch again, after a pass in which a sum of scores was not finite: NonFiniteScores at the
    first batch with a score that is not (a sum of finite scores can overflow)."""
    for i in range(0, len(cases), batch):
        b = slice(i, i + batch)
        s = score_batch(score_fn, history, cases, items, b, pad)
        if not s.isfinite().all():
            what = "NaN" if s.isnan().any() else "infinite"
            raise NonFiniteScores(f"{what} scores among cases {b.start + 1}-{b.start + len(s)} of {len(cases)}")


@torch.no_grad()
def top_items(score_fn, cases: EvalSet, items: slice, device, batch: int, k: int,
              pad: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best-scored items of the target domain for each case, best first (Eq. 9's argmax and the next
    k - 1): ((S, k) global item ids, (S, k) scores), from the same `score_fn` as `rank_cases`."""
    ids, scores, history = [], [], to_device(cases.history, device)
    for i in range(0, len(cases), batch):
        s = score_batch(score_fn, history, cases, items, slice(i, i + batch), pad)  # (B, n)
        top = s.topk(min(k, s.shape[1]), dim=1)  # (B, k)
        ids.append(top.indices.cpu() + items.start)
        scores.append(top.values.cpu())
    return torch.cat(ids), torch.cat(scores)


def warm_items(scen: Scenario) -> torch.Tensor:
    """(N,) bool: the warm items, which ID embeddings learn: those of the training tensors (last max_len + 1 each)."""
    return item_counts(scen.train, scen.items.num_items) > 0


def by_target(ranks: dict, cases: EvalSet, warm: torch.Tensor) -> dict:
    """The metrics of the cases with a cold and with a warm target: {"cold"|"warm": {"cases": S, protocol: ...}}."""
    is_warm = warm[cases.target]  # (S,)
    return {kind: {"cases": int(mask.sum()), **metrics({p: r[mask] for p, r in ranks.items()})}
            for kind, mask in (("cold", ~is_warm), ("warm", is_warm))}


# ----------------------------------------------------------------------------- the scenario, before a run


def check_cases(scen: Scenario, targets) -> None:
    """Every target domain has validation and test cases (a ground truth in that domain)."""
    for target, split, other in [(t, s, "XY".replace(t, "")) for t in targets for s in ("valid", "test")]:
        if len(eval_cases(getattr(scen, split), scen, target)) == 0:
            raise DataError(f"{scen.path / SPLIT_FILES[split]}: no sequence ends in an item of domain {target}: a "
                            f"model for it can neither be selected nor tested. Pass --target {other}, or add some.")


def data_warnings(scen: Scenario, targets) -> list[str]:
    """What to read a run's numbers with: imageless items, held-out sequences repeating training ones, small domains."""
    N, notes = scen.items.num_items, []
    if scen.E_img is not None and (zero := int((scen.E_img == 0).all(dim=1).sum())):
        notes.append(f"{zero:,} of {N:,} items ({100 * zero / N:.1f}%) have no image (a zero row in "
                     f"{EMBEDDINGS_FILE}): only their ID embedding can rank them")
    seen = {tuple(r) for r in torch.cat([scen.train.inputs.xy, scen.train.targets.xy[:, -1:]], 1).tolist()}
    for split, cases in (("valid", scen.valid), ("test", scen.test)):
        if repeats := sum(tuple(r) in seen for r in torch.cat([cases.history.xy, cases.target[:, None]], 1).tolist()):
            notes.append(f"{repeats:,} of {len(cases):,} {split} sequences repeat a training sequence (their "
                         f"last {scen.train.inputs.xy.shape[1] + 1} items): their targets were trained on")
    return notes + [f"domain {t} has {n:,} items: its {NUM_NEGATIVES} sampled negatives repeat some of the other "
                     f"{n - 1:,}, which makes the sampled999 protocol harder than full ranking" for t in targets
                     if (n := len(range(N)[target_items(scen, t)])) - 1 < NUM_NEGATIVES]


# ----------------------------------------------------------------------------- a run's numbers

LABELS = {  # every row of the tables, in the paper's order: baselines first, IFCDSR last (train.ROWS)
    "popularity": "Popularity", "gru4rec": "GRU4Rec", "sasrec": "SASRec", "gru4rec_target": "GRU4Rec, target only",
    "sasrec_target": "SASRec, target only", "original": "ID only, merged view", "image_fusion": "+ image fusion",
    "ifcdsr_id": "IFCDSR ID only", "ifcdsr": "IFCDSR"}
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
        "ablation": {"original": 5.03, "image_fusion": 5.63, "ifcdsr": 6.08}}}
SHOWN = ("MRR", "NDCG@5", "NDCG@10", "HR@10")  # the columns of Tables 2/3, and HR@10
RESAMPLES, BOOTSTRAP_SEED = 1000, 0


def paper(name: str) -> dict:
    """The paper's entry for food_kitchen (Food-Kitchen) or movie_book (Movie-Book); else only the domains' names."""
    return PAPER.get(name.lower().replace("-", "_"), {"names": ("X", "Y")})


# ----------------------------------------------------------------------------- seeds


def aggregate(per_seed: list) -> dict | None:
    """Same-shaped nested dicts, one per seed -> that shape with {"mean", "std" (sample), "n"} at each numeric leaf."""
    first = per_seed[0]
    if isinstance(first, dict):
        return {k: (first[k] if k == "cases" else aggregate([s[k] for s in per_seed])) for k in first}
    v = np.asarray(per_seed, dtype=float)  # (seeds,)
    return None if first is None else {"mean": round(float(v.mean()), 4),
                                       "std": round(float(v.std(ddof=1)), 4) if len(v) > 1 else None, "n": len(v)}


# ----------------------------------------------------------------------------- significance


def paired_bootstrap(rr_ref: np.ndarray, rr_row: np.ndarray) -> dict:
    """MRR(ref) - MRR(row) in % over paired cases, with its 95% bootstrap interval: significant if that excludes 0."""
    diff = 100 * (np.asarray(rr_ref, float) - np.asarray(rr_row, float))  # (S,) paired differences
    pick = np.random.default_rng(BOOTSTRAP_SEED).integers(0, len(diff), size=(RESAMPLES, len(diff)))
    low, high = np.percentile(diff[pick].mean(axis=1), [2.5, 97.5])  # of the (RESAMPLES,) resampled means
    return {"mrr_diff": round(float(diff.mean()), 4), "low": round(float(low), 4), "high": round(float(high), 4),
            "significant": bool(low > 0 or high < 0), "cases": len(diff), "resamples": RESAMPLES}


def significance(ranks: dict, reference: str) -> dict:
    """{model: {domain: {protocol: paired_bootstrap}}}: `reference` - every other model, over seed-averaged 1/rank."""
    def rr(model, d, p):  # (S,)
        return torch.stack([1 / r for r in ranks[model][d][p]]).mean(0).numpy()
    return {m: {d: {p: paired_bootstrap(rr(reference, d, p), rr(m, d, p)) for p in PROTOCOLS}
                for d in ranks[m] if d in ranks[reference]} for m in ranks if m != reference}


# ----------------------------------------------------------------------------- a run's results


def run_results(header: dict, warm: torch.Tensor, rows) -> tuple[dict, dict]:
    """A run's results.json and test_ranks.npz's arrays (`<model>/<seed>/<domain>/<protocol>`) from its rows, (model,
    seed, {target: result}) read one at a time: runs, cold/warm splits, mean ± std over seeds, IFCDSR's bootstraps."""
    runs, ranks, arrays = {}, {}, {}  # ranks: {model: {domain: {protocol: [(S,) ranks, one per seed]}}}
    for model, seed, per_target in rows:
        entry, split = {"seed": seed}, {}
        for target, res in per_target.items():
            for key in [k for k in res if k not in ("ranks", "cases")]:
                entry.setdefault(key, {})[target] = res[key]
            for p, r in res["ranks"].items():
                ranks.setdefault(model, {}).setdefault(target, {}).setdefault(p, []).append(r)
                arrays[f"{model}/{seed}/{target}/{p}"] = r.numpy()
            for kind, part in by_target(res["ranks"], res["cases"], warm).items():
                split.setdefault(kind, {})[target] = part
        runs.setdefault(model, []).append({**entry, "test_by_target": split})
    reference = next((m for m in ("ifcdsr", "ifcdsr_id") if m in runs), None)
    summary = {m: {k: aggregate([e[k] for e in entries]) for k in ("valid", "test", "test_by_target")}
               for m, entries in runs.items()}
    return {**header, "runs": runs, "summary": summary, "significance": {
        "reference": reference, "rows": significance(ranks, reference) if reference else {}}}, arrays


# ----------------------------------------------------------------------------- tables


def at(tree: dict | None, *keys):
    """tree[k1][k2]..., or None where a key is missing or a value on the way is None."""
    return functools.reduce(lambda t, k: t.get(k) if t else None, keys, tree)


def cell(s: dict | None, mark: str = "") -> str:
    """A table's cell: mean ± std (the mean alone for one seed), or - for none."""
    return "-" if s is None else f"{s['mean']:.2f}" + (f" ± {s['std']:.2f}" if s["std"] is not None else "") + mark


def line(label: str, cells: list[str], width: int) -> str:
    """A row of a table: the label in 24 columns, then each cell right-aligned in `width` after a bar."""
    return (f"{label:<24}" + "".join(f" | {c:>{width}}" for c in cells)).rstrip()


def print_table(corner: str, heads: list[str], width: int, rows: dict[str, list[str]]) -> None:
    """A table: its head, a rule and a line per {label: cells}."""
    head = line(corner, heads, width)
    print(head, "-" * len(head), *(line(label, cells, width) for label, cells in rows.items()), sep="\n")


def print_run(results: dict) -> None:
    """The tables that end a run, from its results.json: Tables 2/3, cold/warm MRR, bootstraps, Table 4, --grid."""
    summary, sig, seeds = results["summary"], results["significance"], results["seeds"]
    entry, models, reference = paper(results["scenario"]), [m for m in LABELS if m in summary], sig["reference"]
    names = dict(zip("XY", entry["names"]))
    domains = [d for d in ("X", "Y") if any(d in summary[m]["test"] for m in models)]
    columns, kinds = [(d, m) for d in domains for m in SHOWN], [(d, k) for d in domains for k in ("cold", "warm")]
    over = f"mean ± std over {len(seeds)} seeds" if len(seeds) > 1 else f"seed {seeds[0]}"
    heads = [f"MRR ({names[d]})" if k == "MRR" else k for d, k in columns]
    kind_heads = [f"{k} {names[d]} ({summary[models[-1]]['test_by_target'][k][d]['cases']})" for d, k in kinds]
    for p in PROTOCOLS:
        print("\nTest set, " + {"sampled999": "999 sampled negatives (as C2DSR evaluates; the paper names no protocol)",
                                "full": "full ranking of the target domain"}[p] + f"; %, {over}")
        print_table(f"Model ({names['X']}-{names['Y']})", heads, 15, {LABELS[m]: [cell(
            at(summary, m, "test", d, p, k), " *" if k == "MRR" and at(sig, "rows", m, d, p, "significant") else "")
            for d, k in columns] for m in models})
        if "rows" in entry and p == "sampled999":
            print(f"The paper's {entry['table']} (its own split of the data: not comparable number for number):")
            for label, row in entry["rows"].items():
                given = dict(zip([(d, k) for d in "XY" for k in SHOWN[:3]], row))  # no HR@10
                print(line(f"  {label} (paper)", [f"{given[c]:.2f}" if c in given else "-" for c in columns], 15))
        print_table("MRR by target", kind_heads, 19, {LABELS[m]: [cell(at(summary, m, "test_by_target", k, d, p, "MRR"))
                                                                for d, k in kinds] for m in models})
        if reference and len(models) > 1:  # a row to compare with
            print_table(f"{LABELS[reference]} - row", [f"MRR {names[d]}, 95% interval" for d in domains], 28, {
                LABELS[m]: ["-" if b is None else f"{b['mrr_diff']:+.2f} [{b['low']:+.2f}, {b['high']:+.2f}]"
                            + (" *" if b["significant"] else "  ") for b in (at(sig, "rows", m, d, p) for d in domains)]
                for m in models if m != reference})
            print(f"(* the paired bootstrap interval excludes 0: {RESAMPLES:,} resamples of the test cases, each "
                  f"case's reciprocal rank averaged over the seeds)")
    if all(m in summary for m in ("original", "image_fusion", "ifcdsr")):
        print_ablation(results["scenario"], summary)
    if "grid" in results:
        print_chosen(results)


def print_ablation(name: str, summary: dict) -> None:
    """Table 4: MRR (999 sampled negatives) of each ablation row, mean ± std over seeds."""
    marks = {"original": ("✓", " ", " "), "image_fusion": ("✓", "✓", " "), "ifcdsr": ("✓", "✓", "✓")}
    names, entry = paper(name)["names"], paper(name).get("ablation")
    head = (f"{'original-framework':>18} | {'image fusion':>12} | {'multiple attention':>18} | "
            + " | ".join(f"{'MRR (' + n + ')':>15}" for n in names) + (f" | MRR ({names[0]}, paper)" if entry else ""))
    print(f"\nTable 4 (ablation, test set, 999 sampled negatives, %)\n{head}\n{'-' * len(head)}")
    for variant, row in marks.items():
        print(" | ".join([f"{m:>{w}}" for m, w in zip(row, (18, 12, 18))]
                         + [f"{cell(at(summary, variant, 'test', d, 'sampled999', 'MRR')):>15}" for d in ("X", "Y")]
                         + ([f"{entry[variant]:>{len(names[0]) + 13}.2f}"] if entry else [])))


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
