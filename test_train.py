"""Tests of train.py: the evaluation protocols and metrics, the popularity ranking, and the command line."""
import json
import math
from pathlib import Path

import pytest
import torch

import data
import train
from conftest import run_cli, views
from data import DemoSpec, EvalSet, make_demo, make_train_set


def test_metrics_on_known_ranks():
    """Ranks 1, 2, 10, 11: MRR = (1 + 1/2 + 1/10 + 1/11)/4 = 0.42273;
    NDCG@5 = (1 + 1/log2 3)/4 = 0.40773; NDCG@10 adds 1/log2 11 = 0.28906 -> 0.47999;
    HR@1 = 1/4, HR@5 = 2/4, HR@10 = 3/4."""
    m = train.rank_metrics(torch.tensor([1, 2, 10, 11]))
    expected = {"MRR": 42.273, "NDCG@5": 40.773, "NDCG@10": 47.999, "HR@1": 25.0, "HR@5": 50.0, "HR@10": 75.0}
    for k, v in expected.items():
        assert math.isclose(m[k], v, abs_tol=1e-3), k


def test_rank_counts_only_strictly_higher_candidates():
    """Target-domain scores (5, 7, 5, 1) with ground truth item 0 (score 5): one candidate is
    strictly higher (7) and one ties (5), so rank = 2 under full ranking; negatives (2, 2, 3)
    are all lower or tied, so rank = 1 under the sampled protocol."""
    cases = EvalSet(views([[1]], num_x=4, pad=8), torch.tensor([0]))
    score_fn = lambda history, items: torch.tensor([[5.0, 7.0, 5.0, 1.0, 99.0, 99.0, 99.0, 99.0]])[:, items]
    res = train.evaluate(score_fn, cases, slice(0, 4), torch.tensor([[2, 2, 3]]), "cpu", 8)
    assert res["full"]["MRR"] == 50.0 and res["sampled999"]["MRR"] == 100.0


def test_negatives_are_deterministic_in_domain_and_never_the_target():
    cases = EvalSet(views([[1]] * 50, num_x=10, pad=30), torch.arange(10, 30).repeat(3)[:50])
    items = slice(10, 30)
    a, b = (train.negatives(cases, items, 3, "test", "Y") for _ in range(2))
    assert torch.equal(a, b) and a.shape == (50, 999)
    assert not torch.equal(a, train.negatives(cases, items, 4, "test", "Y"))
    assert not torch.equal(a, train.negatives(cases, items, 3, "valid", "Y"))
    local_target = (cases.target - 10)[:, None]
    assert (a != local_target).all() and a.min() >= 0 and a.max() <= 19
    assert len(torch.unique(a)) == 20  # every other item of the domain gets drawn


def test_popularity_counts_every_training_interaction_once():
    t = make_train_set([[0, 3, 0, 4], [0, 1]], num_x=3, max_len=15, pad=7)
    scen = data.Scenario("t", Path("."), data.Items(["a"] * 7, 3, 4), t, None, None, None)
    assert train.popularity_scores(scen).tolist() == [3, 1, 0, 1, 1, 0, 0]


# ----------------------------------------------------------------------------- command line


def test_cli_end_to_end_resume_and_eval_only(tiny_dir, tmp_path, capsys):
    out = tmp_path / "run"
    common = ("--data-dir", tiny_dir, "--epochs", 2, "--batch-size", 16, "--out", out)
    assert run_cli(*common) == 0
    printed = capsys.readouterr().out
    assert "Popularity" in printed and "IFCDSR (this run)" in printed
    res = json.loads((out / "results.json").read_text())
    for split in ("valid", "test"):
        for d in ("X", "Y"):
            assert set(res[split][d]) == set(train.PROTOCOLS)
            assert set(res[split][d]["full"]) == set(train.METRICS)
    assert set(res["popularity"]) == {"X", "Y"} and res["config"]["epochs"] == 2
    assert len(res["history"]["X"]) == 2 and (out / "best_X.pt").is_file() and (out / "best_Y.pt").is_file()

    # an existing run is never overwritten without --resume
    before = (out / "results.json").read_bytes()
    assert run_cli(*common) == 2 and "--resume" in capsys.readouterr().err
    assert (out / "results.json").read_bytes() == before

    # resuming a finished run retrains nothing and reproduces the same numbers
    assert run_cli(*common, "--resume") == 0
    assert json.loads((out / "results.json").read_text())["test"] == res["test"]

    assert run_cli("--data-dir", tiny_dir, "--eval-only", out / "best_X.pt") == 0
    assert f"MRR {res['test']['X']['sampled999']['MRR']:.2f}" in capsys.readouterr().out


def test_resume_after_interruption_gives_the_same_result(tiny_dir, tmp_path):
    common = ("--data-dir", tiny_dir, "--target", "X", "--batch-size", 16)
    assert run_cli(*common, "--epochs", 3, "--out", tmp_path / "straight") == 0
    # as if interrupted after one epoch: a 1-epoch run, resumed (and extended) to 3 epochs
    assert run_cli(*common, "--epochs", 1, "--out", tmp_path / "cut") == 0
    assert run_cli(*common, "--epochs", 3, "--out", tmp_path / "cut", "--resume") == 0
    a, b = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("straight", "cut"))
    assert a["test"] == b["test"] and a["valid"] == b["valid"]
    assert [h["loss"] for h in a["history"]["X"]] == [h["loss"] for h in b["history"]["X"]]
    # other settings than the schedule may not change
    assert run_cli(*common, "--epochs", 4, "--lr", 0.5, "--out", tmp_path / "cut", "--resume") == 2


@pytest.mark.parametrize("args,message", [
    (("--alpha", "1.5"), "alpha must lie in [0, 1]"),
    (("--scenario", "nope"), "unknown scenario 'nope'"),
    (("--data-dir", "/nonexistent/x"), "scenario directory not found"),
])
def test_cli_bad_input_exits_2_with_a_message(args, message, capsys, tmp_path):
    assert run_cli(*args, "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cli_rejects_a_checkpoint_of_another_scenario(tiny_dir, tmp_path, capsys):
    other = make_demo(tmp_path / "other", seed=1, spec=DemoSpec(num_x=41, num_y=50, num_users=90, image_dim=8))
    assert run_cli("--data-dir", tiny_dir, "--target", "X", "--epochs", 1, "--out", tmp_path / "r") == 0
    assert run_cli("--data-dir", other, "--eval-only", tmp_path / "r" / "best_X.pt") == 2
    assert "41+50" in capsys.readouterr().err
