"""walkthrough.py: every step of Eq. 1-9 for one history, printed pieces that add up to what the model itself
returns and follow the paper's formulas, a broken equation stopping it, and docs/walkthrough.md showing exactly
what the program prints."""
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import ifcdsr
import walkthrough

ROOT = Path(__file__).resolve().parent.parent  # the project
STEPS = ("§3.1.2 the three views", "IFCDSR.encode: F_id", "Eq. 1 (AttentionEncoder.forward)", "Eq. 2 (similarity)",
         "Eq. 3/4 (branch_log_prob)", "Eq. 5 (mixture)", "Eq. 6 (IFCDSR.loss)", "Eq. 7: L = ", "Eq. 8 (IFCDSR.score)",
         "Eq. 9 (IFCDSR.recommend)")
SWITCHES = [[], ["--target", "Y", "--no-image"], ["--literal", "--alpha", "0.2"]]


@pytest.mark.parametrize("argv", SWITCHES, ids=[" ".join(a) or "defaults" for a in SWITCHES])
def test_every_step_is_printed_and_the_pieces_add_up_to_the_models_results(argv, capsys, tmp_path, monkeypatch):
    """The contributions of Eq. 8 sum to IFCDSR.score, the per-view losses recomputed from the recorded
    log-probabilities are IFCDSR.loss's parts and their λ-weighted sum its total, and the argmax is
    IFCDSR.recommend's; the command writes nothing."""
    monkeypatch.chdir(tmp_path)
    cfg = walkthrough.config(argv)
    got = walkthrough.walk(cfg)
    printed = capsys.readouterr().out
    assert all(step in printed for step in STEPS)
    assert torch.allclose(sum(got["contributions"].values()), got["score"], atol=1e-6)
    assert got["L"].keys() == got["parts"].keys() == cfg.view_weights().keys()
    assert all(abs(got["L"][v] - got["parts"][v]) < 1e-5 for v in got["L"])
    assert abs(sum(w * got["L"][v] for v, w in cfg.view_weights().items()) - got["loss"]) < 1e-5
    assert got["best"] == got["recommended"] and list(tmp_path.iterdir()) == []
    assert got["hit"] == (got["best"] == walkthrough.ids(walkthrough.USER)[-1])
    assert walkthrough.USER not in walkthrough.TRAIN  # a user of the test set: Eq. 9 predicts, not recalls


mixture, similarity = ifcdsr.mixture, ifcdsr.similarity
BROKEN = {  # an equation broken in ifcdsr.py, the switches under which it shows, the step that must stop
    "swapped-alpha": ("mixture", lambda log_P_id, log_P_img, alpha: mixture(log_P_id, log_P_img, 1 - alpha), [],
                      "Eq. 5 (mixture)"),
    "softmax-over-the-wrong-items": ("softmax_items", lambda model, view: slice(0, model.N), [],
                                     "Eq. 3/4 (branch_log_prob)"),
    "no-tau": ("similarity", lambda h, E_unit, temperature: similarity(h, E_unit, 1.0), ["--temperature", "0.1"],
               "Eq. 2 (similarity)"),
}


@pytest.mark.parametrize("name,broken,argv,step", BROKEN.values(), ids=BROKEN.keys())
def test_a_broken_equation_stops_the_walkthrough_at_its_step(name, broken, argv, step, monkeypatch, capsys):
    """The walkthrough checks each step with the paper's formula, not only that the pieces add up: a swapped
    α in `mixture`, every view's softmax over all items under the printed `domain`, a τ that Eq. 2 ignores
    each make `python walkthrough.py` fail (exit 1) with an error naming the step."""
    monkeypatch.setattr(ifcdsr.IFCDSR if name == "softmax_items" else ifcdsr, name, broken)
    assert walkthrough.main(argv) == 1
    assert capsys.readouterr().err.startswith(f"walkthrough.py: {step}: the model's numbers do not follow")


NUMBER = re.compile(r" *[-+]?\d+\.\d+")  # a number and the spaces that align it


def test_the_doc_shows_what_the_program_prints(capsys):
    """The doc's text is the printout's, word for word, and so are its numbers up to one unit of their last digit:
    the tiny model trains in float64, but another CPU's vectorised kernels (AVX2 or AVX-512) may still round a
    printed value the other way."""
    assert walkthrough.main([]) == 0
    printed = capsys.readouterr().out.strip()
    doc = "\n\n".join(re.findall(r"```text\n(.*?)\n```", (ROOT / "docs" / "walkthrough.md").read_text(), re.S))
    assert NUMBER.sub("#", doc) == NUMBER.sub("#", printed)
    shown, got = (np.array([float(x) for x in NUMBER.findall(text)]) for text in (doc, printed))
    assert np.abs(shown - got).max() <= 0.0011
