"""Tests of evaluate.py: metrics, ranks with fair ties, negatives, cold/warm targets, and the target domain's
items through the whole evaluation path."""
import math

import pytest
import torch

import evaluate
import train
from conftest import line, views, write_scenario
from data import EvalSet, item_counts, load_scenario, make_train_set
from evaluate import rank_cases


def test_metrics_on_known_ranks():
    """Ranks 1, 2, 10, 11: MRR = (1 + 1/2 + 1/10 + 1/11)/4 = 0.42273;
    NDCG@5 = (1 + 1/log2 3)/4 = 0.40773; NDCG@10 adds 1/log2 11 = 0.28906 -> 0.47999;
    HR@1 = 1/4, HR@5 = 2/4, HR@10 = 3/4."""
    m = evaluate.metrics({"full": torch.tensor([1, 2, 10, 11])})["full"]
    expected = {"MRR": 42.273, "NDCG@5": 40.773, "NDCG@10": 47.999, "HR@1": 25.0, "HR@5": 50.0, "HR@10": 75.0}
    for k, v in expected.items():
        assert math.isclose(m[k], v, abs_tol=1e-3), k
    assert evaluate.metrics({"full": torch.tensor([])}) == {"full": None}


def test_a_tie_counts_half():
    """Target-domain scores (5, 7, 5, 1) with ground truth item 0 (score 5): one candidate is strictly
    higher (7) and one ties (5), so rank = 1 + 1 + ½ = 2.5 under full ranking; negatives (2, 2, 3, 2)
    = scores (5, 5, 1, 5): three ties, rank = 1 + 3/2 = 2.5 under the sampled protocol. Scores of the
    other domain (99) are never candidates."""
    cases = EvalSet(views([[1]], num_x=4, pad=8), torch.tensor([0]))
    score_fn = lambda history, items, shape: torch.tensor([[5.0, 7.0, 5.0, 1.0, 99.0, 99.0, 99.0, 99.0]])[:, items]
    ranks = rank_cases(score_fn, cases, slice(0, 4), torch.tensor([[2, 2, 3, 2]]), "cpu", 8)
    assert ranks["full"].tolist() == [2.5] and ranks["sampled999"].tolist() == [2.5]
    assert evaluate.metrics(ranks)["full"]["MRR"] == 40.0


def test_popularity_ties_are_not_wins():
    """Every case scores all 4 candidates the same (an unseen item under popularity): the expected rank
    under a random tie-break is (1 + 2 + 3 + 4) / 4 = 2.5 = 1 + 3/2, not 1."""
    cases = EvalSet(views([[1], [2]], num_x=4, pad=8), torch.tensor([0, 3]))
    ranks = rank_cases(lambda h, items, shape: torch.zeros(len(h.xy), 4), cases, slice(0, 4),
                       torch.tensor([[1, 2, 3], [0, 1, 2]]), "cpu", 1)
    assert ranks["full"].tolist() == [2.5, 2.5] and ranks["sampled999"].tolist() == [2.5, 2.5]


def test_negatives_are_fixed_in_domain_and_never_the_target():
    """The same for every call (one seed, whatever the training seed), other per split, every other item of
    the domain drawn, never the ground truth."""
    cases = EvalSet(views([[1]] * 50, num_x=10, pad=30), torch.arange(10, 30).repeat(3)[:50])
    items = slice(10, 30)
    a, b = (evaluate.negatives(cases, items, "test", "Y") for _ in range(2))
    assert torch.equal(a, b) and a.shape == (50, 999)
    assert not torch.equal(a, evaluate.negatives(cases, items, "valid", "Y"))
    local_target = (cases.target - 10)[:, None]
    assert (a != local_target).all() and a.min() >= 0 and a.max() <= 19
    assert len(torch.unique(a)) == 20


def test_cold_and_warm_targets():
    """Training sequences [0, 3, 1] and [4, 0]: items 0, 1, 3, 4 are warm, 2, 5, 6 cold. Cases with
    targets 2, 1, 5 and ranks 1, 2, 4: cold = targets 2 and 5 (MRR (1 + 1/4)/2 = 62.5), warm = target 1."""
    t = make_train_set([[0, 3, 1], [4, 0]], num_x=3, max_len=15, pad=7)
    warm = item_counts(t, 7) > 0
    assert warm.tolist() == [True, True, False, True, True, False, False]
    cases = EvalSet(views([[0], [0], [3]]), torch.tensor([2, 1, 5]))
    ranks = {p: torch.tensor([1.0, 2.0, 4.0]) for p in evaluate.PROTOCOLS}
    split = evaluate.by_target(ranks, cases, warm)
    assert split["cold"]["cases"] == 2 and split["warm"]["cases"] == 1
    assert split["cold"]["full"]["MRR"] == 62.5 and split["warm"]["sampled999"]["MRR"] == 50.0


def test_a_target_absent_from_training_is_cold_and_one_present_is_warm(tmp_path):
    """Training sequences over items 0, 1, 3, 4; test targets 2 (never trained on: cold) and 1 (warm), through
    `warm_items` of a scenario read from files, as train.py computes the split."""
    folder = write_scenario(tmp_path / "s", [line(1, (0, 1), (3, 2), (1, 3)), line(2, (4, 1), (0, 2))],
                            test_lines=[line(3, (0, 1), (2, 2)), line(4, (3, 1), (1, 2))])
    scen = load_scenario(folder, max_len=15, use_images=False)
    warm = evaluate.warm_items(scen)
    assert warm.tolist() == [True, True, False, True, True, False, False]
    split = evaluate.by_target({p: torch.tensor([1.0, 2.0]) for p in evaluate.PROTOCOLS}, scen.test, warm)
    assert (split["cold"]["cases"], split["warm"]["cases"]) == (1, 1) and split["cold"]["full"]["MRR"] == 100.0


@pytest.mark.parametrize("where", ["the ground truth", "a negative", "an item outside the negatives"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_non_finite_score_is_an_error_under_both_protocols(where, value):
    """NaN compares false with everything, so it would rank first; no rank of either protocol is computed
    from a NaN or infinite score: rank_cases stops with NonFiniteScores."""
    cases = EvalSet(views([[1]], num_x=4, pad=8), torch.tensor([0]))
    scores = torch.tensor([[5.0, 7.0, 5.0, 1.0]])
    scores[0, {"the ground truth": 0, "a negative": 2, "an item outside the negatives": 1}[where]] = value
    with pytest.raises(evaluate.NonFiniteScores, match="scores among cases 1-1 of 1"):
        rank_cases(lambda history, items, shape: scores, cases, slice(0, 4), torch.tensor([[2, 3]]), "cpu", 8)


def test_finite_scores_whose_sum_overflows_are_ranked():
    """The finiteness check sums the scores first; a sum that overflows to inf from finite scores is checked
    score by score and ranked, not refused."""
    cases = EvalSet(views([[1]], num_x=4, pad=8), torch.tensor([0]))
    scores = torch.tensor([[3e38, 3e38, 1.0, 3e38]])
    ranks = rank_cases(lambda history, items, shape: scores, cases, slice(0, 4), torch.tensor([[2, 3]]), "cpu", 8)
    assert ranks["full"].tolist() == [2.0] and ranks["sampled999"].tolist() == [1.5]


def test_evaluation_ranks_only_the_target_domains_items(tiny_dir, tmp_path):
    """Through Trainer.evaluate: scores that put every item of the other domain first must not move any
    rank, and the full-ranking MRR is the one counted over the target domain's items alone."""
    scen = load_scenario(tiny_dir, max_len=15, use_images=False)
    N, num_x = scen.items.num_items, scen.items.num_x
    scores = torch.rand(N, generator=torch.Generator().manual_seed(0))
    for target, own in (("X", slice(0, num_x)), ("Y", slice(num_x, N))):
        other = torch.ones(N, dtype=torch.bool)
        other[own] = False
        rigged = torch.where(other, 10.0, scores)  # the other domain outscores everything
        trainer = train.Trainer("ifcdsr_id", train.Config(use_image=False, target=target, q=8), scen, torch.device("cpu"),
                                tmp_path, resume=False)
        trainer.model.score = lambda history, items, matrices=None, shape=None: \
            rigged[items].expand(len(history.xy), -1)
        cases = evaluate.eval_cases(scen.test, scen, target)
        expected = 1 + (scores[own][None, :] > scores[cases.target][:, None]).sum(1)  # ranks among the domain
        assert math.isclose(trainer.evaluate("test")["full"]["MRR"],
                            evaluate.metrics({"full": expected})["full"]["MRR"])
