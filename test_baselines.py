"""Tests of baselines.py: SASRec and GRU4Rec are causal, read and score only the target domain, learn; the
popularity score counts training interactions."""
from pathlib import Path

import pytest
import torch

import data
from baselines import GRU4Rec, SASRec, popularity_scores
from conftest import TINY, full_batch_losses, views
from data import load_scenario, make_demo, make_train_set
from ifcdsr import Config

MODELS = (SASRec, GRU4Rec)


def tiny(cls, target="X", seed=0):
    torch.manual_seed(seed)
    return cls(Config(q=8, dropout=0.0, target=target), num_x=3, num_y=4).eval()


@pytest.mark.parametrize("cls", MODELS)
def test_causal_a_later_item_never_changes_an_earlier_output(cls):
    """Domain Y (ids 3..6, pad 7): positions of [3, 5] are the same whether 6 follows them or not."""
    model = tiny(cls, "Y")
    short, long_ = torch.tensor([[7, 7, 3, 5]]), torch.tensor([[7, 3, 5, 6]])
    assert torch.allclose(model.hidden(short)[0, 2:], model.hidden(long_)[0, 1:3], atol=1e-6)


@pytest.mark.parametrize("cls", MODELS)
def test_left_padding_changes_nothing(cls):
    model = tiny(cls, "Y")
    a, b = torch.tensor([[3, 5, 6]]), torch.tensor([[7, 7, 7, 3, 5, 6]])
    assert torch.allclose(model.hidden(a), model.hidden(b)[:, 3:], atol=1e-6)


@pytest.mark.parametrize("cls", MODELS)
@pytest.mark.parametrize("target", ["X", "Y"])
def test_reads_only_the_target_domain_and_scores_only_its_items(cls, target):
    """The other domain's items in the history change nothing; the scores cover the target domain's items
    (3 of X, 4 of Y) and asking for any other items is an error."""
    model = tiny(cls, target)
    own, other = (slice(0, 3), slice(3, 7)) if target == "X" else (slice(3, 7), slice(0, 3))
    a, b = views([[0, 3, 1, 4]]), views([[0, 5, 1, 6, 3]])  # same X items, other Y items
    c, d = views([[0, 3, 1, 4]]), views([[2, 3, 2, 4]])  # same Y items, other X items
    same = (a, b) if target == "X" else (c, d)
    assert torch.allclose(model.score(same[0], own), model.score(same[1], own), atol=1e-6)
    assert model.score(a, own).shape == (1, own.stop - own.start)
    with pytest.raises(ValueError, match="scores its target domain's items"):
        model.score(a, other)


@pytest.mark.parametrize("cls", MODELS)
def test_a_few_training_steps_lower_the_loss(cls, tmp_path):
    scen = load_scenario(make_demo(tmp_path / "demo", seed=0, spec=TINY), max_len=15, use_images=False)
    torch.manual_seed(0)
    model = cls(Config(q=32, dropout=0.0, target="Y"), scen.items.num_x, scen.items.num_y)
    losses, parts = full_batch_losses(model, scen.train, lr=1e-2)
    assert set(parts) == {"y"} and losses[-1] < losses[0] - 0.1


def test_popularity_counts_every_training_interaction_once():
    t = make_train_set([[0, 3, 0, 4], [0, 1]], num_x=3, max_len=15, pad=7)
    scen = data.Scenario("t", Path("."), data.Items(["a"] * 7, 3, 4), t, None, None, None, "t", None)
    assert popularity_scores(scen).tolist() == [3, 1, 0, 1, 1, 0, 0]
