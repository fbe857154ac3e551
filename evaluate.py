"""The evaluation protocols: which test cases a model answers, which candidates it ranks the ground truth
among, the rank (ties counted fairly), the metrics, and the split into cold and warm targets.

Every model is evaluated the same way: `score_fn(history, items)` -> (B, |items|) scores of the target
domain's items (Eq. 9 ranks only those), for the cases whose ground truth lies in the target domain.
Dimension letters: S cases, B a batch of them, n items of the target domain.
"""
from __future__ import annotations

import numpy as np
import torch

import ifcdsr
from data import EvalSet, Scenario, Views, item_counts

METRICS = ("MRR", "NDCG@5", "NDCG@10", "HR@1", "HR@5", "HR@10")
PROTOCOLS = ("sampled999", "full")  # C2DSR's 999 sampled negatives; full ranking of the target domain
NUM_NEGATIVES = 999
NEGATIVE_SEED = 0  # the negatives come from this one seed, whatever the training seed (see `negatives`)


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
    is_y = split.target >= scen.items.num_x
    return split.subset(is_y if domain == "Y" else ~is_y)


def negatives(cases: EvalSet, items: slice, split: str, target: str) -> torch.Tensor:
    """999 negatives per case, uniform over the target domain without the ground truth (C2DSR), drawn
    once per (split, target) -> (S, 999) local item indices.

    Note: drawn from NEGATIVE_SEED, not from the training seed, so that every model and every seed is
    ranked against the same candidates (what the paired comparison of report.py needs); with replacement,
    as C2DSR's evaluation draws them, so a case may meet the same negative twice.
    """
    rng = np.random.default_rng([NEGATIVE_SEED, ("valid", "test").index(split), ("X", "Y").index(target)])
    n = items.stop - items.start
    local = rng.integers(0, n - 1, size=(len(cases), NUM_NEGATIVES))
    target = (cases.target - items.start).numpy()[:, None]
    return torch.from_numpy(local + (local >= target))  # skip over the ground truth


def rank_metrics(rank: torch.Tensor) -> dict[str, float] | None:
    """rank (S,) 1-based -> MRR, NDCG@k, HR@k in %; None when there are no cases."""
    if len(rank) == 0:
        return None
    rank = rank.double()
    out = {"MRR": (1 / rank).mean()}
    for k in (5, 10):
        out[f"NDCG@{k}"] = torch.where(rank <= k, 1 / torch.log2(rank + 1), 0.0).mean()
    for k in (1, 5, 10):
        out[f"HR@{k}"] = (rank <= k).double().mean()
    return {m: round(100 * out[m].item(), 4) for m in METRICS}


def to_device(batch: Views, device) -> Views:
    """A batch of views to the device; to CUDA through pinned memory, without blocking the host."""
    return Views(*(ifcdsr.host_to(device, v) for v in (batch.x, batch.y, batch.xy)))


@torch.no_grad()
def rank_cases(score_fn, cases: EvalSet, items: slice, neg: torch.Tensor, device, batch: int,
               pad: int | None = None) -> dict:
    """The rank of each case's ground truth among the target domain's items (Eq. 9) under both protocols:
    {protocol: (S,) float64 ranks}. `score_fn(history, items, shape)` -> (B, |items|) scores, `shape` the
    batch's `ifcdsr.shapes` read from the CPU copy (None without the padding id `pad`).

    The cases move to the device once (`on_device`); each batch is scored and ranked there (`rank_batch`),
    and the host waits for the device once per pass, for the ranks and the finiteness verdicts.
    A NaN or infinite score is an error (NonFiniteScores), never a rank.
    """
    resident = on_device(cases, items, neg, device, batch)
    done = [rank_batch(score_fn, cases, resident, items, slice(i, i + batch), pad)
            for i in range(0, len(cases), batch)]
    if done and not torch.stack([finite for *_, finite in done]).all():
        check_finite(score_fn, resident[0], cases, items, batch, pad)
    return {p: torch.cat([r[k] for r in done]).double().cpu() if done else torch.empty(0, dtype=torch.float64)
            for k, p in enumerate(PROTOCOLS)}


def on_device(cases: EvalSet, items: slice, neg: torch.Tensor, device, batch: int) -> tuple:
    """What every batch of a pass reads, moved to the device once: the histories, the ground truths counted
    from the domain's first item, the negatives, and a reused (batch, n) buffer for the comparisons."""
    flags = torch.empty(min(batch, len(cases)), items.stop - items.start, device=device)
    return (to_device(cases.history, device), ifcdsr.host_to(device, cases.target - items.start),
            ifcdsr.host_to(device, neg), flags)


def rank_batch(score_fn, cases: EvalSet, resident: tuple, items: slice, b: slice, pad: int | None) -> tuple:
    """The cases `b` of a pass: (sampled999 ranks (B,), full ranks (B,), whether their scores' sum is finite),
    all on the device; nothing here waits for it.

    Note: rank = 1 + (candidates scoring strictly higher) + ½·(other candidates scoring the same): the
    expected rank under a random tie-break. C2DSR counts a tie (within 1e-5) as a win, which flatters a
    model with many equal scores, such as popularity (every unseen item scores 0).
    """
    history, target, neg, flags = resident
    s = score_batch(score_fn, history, cases, items, b, pad)  # (B, n)
    s_t = s.gather(1, target[b, None])  # (B, 1)
    # counted as 0/1 floats in a reused buffer: summing a new bool tensor is several times slower
    higher = torch.gt(s, s_t, out=flags[:len(s_t)]).sum(1)  # (B,)
    tied = torch.ge(s, s_t, out=flags[:len(s_t)]).sum(1) - higher - 1  # (B,) the ground truth ties itself
    s_neg = s.gather(1, neg[b])  # (B, 999)
    # NaN compares false with everything: it would rank first. A finite sum says every score is finite in one
    # cheap pass; the verdicts are read after the pass
    return 1 + (s_neg > s_t).sum(1) + (s_neg == s_t).sum(1) / 2, 1 + higher + tied / 2, s.sum().isfinite()


def score_batch(score_fn, history: Views, cases: EvalSet, items: slice, b: slice, pad: int | None) -> torch.Tensor:
    """(B, |items|) fp32 scores of the cases `b`, `history` their views on the device, their shapes read from
    the CPU copy in `cases` (none without the padding id `pad`)."""
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


def metrics(ranks: dict) -> dict:
    """{protocol: (S,) ranks} -> {protocol: {metric: value in %}}."""
    return {p: rank_metrics(r) for p, r in ranks.items()}


def warm_items(scen: Scenario) -> torch.Tensor:
    """(N,) bool: the items that occur in the training tensors, i.e. in the last max_len + 1 items of a
    training sequence (an item only in an older, cut part of one counts as cold); a test target outside them
    is cold, something an ID embedding cannot have learnt (an image embedding can)."""
    return item_counts(scen.train, scen.items.num_items) > 0


def by_target(ranks: dict, cases: EvalSet, warm: torch.Tensor) -> dict:
    """The metrics of the cases with a cold and with a warm target: {"cold"|"warm": {"cases": S, protocol: ...}}."""
    is_warm = warm[cases.target]  # (S,)
    return {kind: {"cases": int(mask.sum()), **metrics({p: r[mask] for p, r in ranks.items()})}
            for kind, mask in (("cold", ~is_warm), ("warm", is_warm))}
