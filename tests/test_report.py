"""Tests of report.py: seeds aggregated to mean ± std, the paired bootstrap, and the printed tables."""
import json
import math

import numpy as np
import pytest
import torch

import evaluate
from tools import report


def test_seeds_aggregate_to_mean_sample_std_and_n():
    """MRR 10, 12, 14 over three seeds: mean 12, sample std sqrt(((-2)² + 0 + 2²) / 2) = 2; case counts
    are kept, a missing metric stays None, and one seed has no std."""
    per_seed = [{"X": {"cases": 7, "full": {"MRR": v}, "sampled999": None}} for v in (10.0, 12.0, 14.0)]
    agg = evaluate.aggregate(per_seed)
    assert agg == {"X": {"cases": 7, "full": {"MRR": {"mean": 12.0, "std": 2.0, "n": 3}}, "sampled999": None}}
    assert evaluate.aggregate(per_seed[:1])["X"]["full"]["MRR"] == {"mean": 10.0, "std": None, "n": 1}


def test_bootstrap_covers_zero_for_identical_rankings_and_excludes_it_for_a_clearly_better_one():
    rng = np.random.default_rng(1)
    rr = 1 / rng.integers(1, 100, size=400)
    same = evaluate.paired_bootstrap(rr, rr)
    assert same["mrr_diff"] == 0 and same["low"] <= 0 <= same["high"] and not same["significant"]
    better = evaluate.paired_bootstrap(np.minimum(1.0, 2 * rr), rr)  # every reciprocal rank doubled
    assert better["low"] > 0 and better["significant"] and better["mrr_diff"] == pytest.approx(
        100 * (np.minimum(1.0, 2 * rr) - rr).mean(), abs=1e-4)
    noise = evaluate.paired_bootstrap(rr, rr[rng.permutation(400)])  # unrelated pairs of the same numbers
    assert noise["low"] < 0 < noise["high"] and noise["resamples"] == 1000 and noise["cases"] == 400


def test_bootstrap_interval_is_a_95_percent_one():
    """Paired differences drawn from N(μ = 0.01, σ = 0.05) over n = 2,000 cases (reciprocal ranks, so 100·
    in %): the mean's 95% interval is close to 100·(mean ± 1.96·σ/√n) = mean ± 0.219, not the ± 0.075 of a
    50% interval."""
    rng = np.random.default_rng(3)
    diff = rng.normal(0.01, 0.05, size=2000)
    got = evaluate.paired_bootstrap(diff, np.zeros(2000))
    half = 100 * 1.96 * 0.05 / math.sqrt(2000)
    assert (got["high"] - got["low"]) / 2 == pytest.approx(half, rel=0.1)
    assert (got["high"] + got["low"]) / 2 == pytest.approx(100 * diff.mean(), abs=0.03)


def test_significance_pairs_cases_and_averages_seeds():
    """Two seeds of the reference with ranks (1, 2) and (1, 4): averaged reciprocal ranks (1, 3/8); the
    row's ranks (2, 2) give (1/2, 1/2): differences (1/2, -1/8), MRR difference 100·(3/8)/2 = 18.75."""
    ranks = {"ifcdsr": {"X": {p: [torch.tensor([1.0, 2.0]), torch.tensor([1.0, 4.0])] for p in ("sampled999", "full")}},
             "sasrec": {"X": {p: [torch.tensor([2.0, 2.0])] for p in ("sampled999", "full")}}}
    sig = evaluate.significance(ranks, "ifcdsr")
    assert set(sig) == {"sasrec"} and math.isclose(sig["sasrec"]["X"]["full"]["mrr_diff"], 18.75)


def test_tables_show_mean_std_paper_rows_cold_warm_and_significance(capsys):
    def res(mrr, std):
        m = {"mean": mrr, "std": std, "n": 3}
        metrics = {k: m for k in ("MRR", "NDCG@5", "NDCG@10", "HR@10")}
        return {"test": {"X": {"sampled999": metrics, "full": metrics}},
                "test_by_target": {kind: {"X": {"cases": 5, "sampled999": metrics, "full": metrics}}
                                   for kind in ("cold", "warm")}}
    summary = {"popularity": res(3.0, None), "ifcdsr": res(9.5, 0.25)}
    bootstrap = {"mrr_diff": 6.5, "low": 5.0, "high": 8.0, "significant": True}
    sig = {"popularity": {"X": {"sampled999": bootstrap, "full": bootstrap}}}
    evaluate.print_run({"scenario": "Food-Kitchen", "summary": summary, "seeds": [0, 1, 2],
                        "significance": {"reference": "ifcdsr", "rows": sig}})
    out = capsys.readouterr().out
    assert "MRR (Food)" in out and "9.50 ± 0.25" in out and "3.00 *" in out and "mean ± std over 3 seeds" in out
    assert "The paper's Table 2" in out and "Tri-CDR (paper)" in out and "not comparable number for number" in out
    assert "cold Food (5)" in out and "+6.50 [+5.00, +8.00] *" in out


def test_compare_pairs_each_run_with_the_reference(tiny_dir, tmp_path, capsys):
    """A --compare run (every row, popularity included) against a copy of itself differs by exactly 0; a copy
    whose test ranks are all doubled loses MRR (a negative difference that excludes 0); a default run of
    another seed pairs with it row by row; a run of other data is refused."""
    import shutil
    from conftest import run_cli
    ref, default = tmp_path / "ref", tmp_path / "default"
    flags = ("--data-dir", tiny_dir, "--target", "X", "--epochs", 1, "--batch-size", 32, "--device", "cpu")
    assert run_cli(*flags, "--compare", "--out", ref) == 0
    assert run_cli(*flags, "--seed", 1, "--out", default) == 0
    same, worse = tmp_path / "same", tmp_path / "worse"
    shutil.copytree(ref, same)
    shutil.copytree(ref, worse)
    with np.load(ref / "test_ranks.npz") as npz:
        np.savez(worse / "test_ranks.npz", **{k: 2 * npz[k] for k in npz.files})
    capsys.readouterr()
    assert report.main(["compare", str(ref), str(same), str(worse), str(default)]) == 0
    rows = {tuple(r[:2]): r for r in (line.split(" | ") for line in capsys.readouterr().out.splitlines()[2:])}
    models = ["popularity", "gru4rec", "sasrec", "ifcdsr_id", "ifcdsr"]
    assert list(rows) == [(f"| {run}", m) for run in ("ref", "same", "worse") for m in models] + [
        ("| default", "popularity"), ("| default", "ifcdsr")]
    assert all(rows["| ref", m][-1] == "(reference) |" for m in models)
    assert all(rows["| same", m][-2] == "+0.00 [+0.00, +0.00]" for m in models)
    assert rows["| worse", "popularity"][-2].startswith("-") and rows["| worse", "ifcdsr"][-2].endswith("*")
    assert rows["| default", "popularity"][-2] == "+0.00 [+0.00, +0.00]"  # popularity needs no seed
    assert rows["| default", "ifcdsr"][-2] != "+0.00 [+0.00, +0.00]"
    results = json.loads((same / "results.json").read_text())
    (same / "results.json").write_text(json.dumps({**results, "data_sha256": "other"}))
    assert report.main(["compare", str(ref), str(same)]) == 2
    assert "trained on other data" in capsys.readouterr().err


def test_a_run_folder_reprints_the_tables_that_ended_the_run(tiny_run, capsys):
    out, printed = tiny_run
    assert report.main([str(out)]) == 0
    tables = capsys.readouterr().out
    assert "IFCDSR" in tables and printed.endswith(f"{tables}\nresults: {out / 'results.json'}\n")


def test_plot_writes_the_learning_curves_of_every_training(tiny_run, capsys):
    pytest.importorskip("matplotlib")
    out, _ = tiny_run
    assert report.main(["plot", str(out)]) == 0
    png = out / "curves.png"
    assert capsys.readouterr().out == f"wrote {png}\n" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image
    with Image.open(png) as image:  # a row for each trained model and target (IFCDSR, X and Y): MRR, 3 losses
        assert abs(image.width - 72 * 3.4 * 4) <= 1 and abs(image.height - 72 * 2.4 * 2) <= 1


def broken_import(name, error):
    """An __import__ under which `import name` raises `error`, as a missing or broken install does."""
    real = __import__

    def imports(module, *args, **kwargs):
        if module.split(".")[0] == name:
            raise error
        return real(module, *args, **kwargs)
    return imports


@pytest.mark.parametrize("error", [ImportError("No module named 'matplotlib'"), RuntimeError("broken install"),
                                   AttributeError("module 'numpy' has no attribute 'float'")])
def test_plot_without_a_working_matplotlib_says_how_to_install_it(error, tiny_run, capsys, monkeypatch):
    monkeypatch.setattr("builtins.__import__", broken_import("matplotlib", error))
    assert report.main(["plot", str(tiny_run[0])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: python -m tools.report plot needs matplotlib") and "pip install matplotlib" in err
    assert f"{type(error).__name__}: {error}" in err


@pytest.mark.parametrize("command", [["tables"], ["plot"], ["compare"]])
@pytest.mark.parametrize("content", ["[" * 200_000, "[]", '"a string"', "1e999999", '{"summary": {}, "runs": 3}'])
def test_a_hostile_results_file_is_a_clear_error_that_names_it(command, content, tmp_path, capsys):
    """200,000 nested lists (deeper than json's parser recurses), JSON that is no object, and an object whose
    values have other types than train.py writes: exit code 2 and a message naming results.json, never a
    traceback."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(content)
    np.savez(run / "test_ranks.npz", **{"ifcdsr/0/X/full": np.ones(3)})
    folders = [str(run), str(run)] if command == ["compare"] else [str(run)]
    assert report.main(command + folders) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {run / 'results.json'}: ") and "Traceback" not in err


def test_a_folder_that_is_no_run_is_refused(tmp_path, capsys):
    assert report.main([str(tmp_path)]) == 2 and "not a finished run" in capsys.readouterr().err


def test_a_grid_run_prints_the_point_each_row_used_per_target_and_seed(capsys):
    """--grid temperature=1,0.1, two seeds: IFCDSR's kept points are those whose validation MRR is higher
    (seed 0: 0.1 with 12.50 > 11.00; seed 1: 1.0 with 13.25 > 12.75); SASRec, on which τ does not act, trained
    at its only point; popularity trains nowhere and has no line."""
    def entry(seed, scores, chosen):
        return {"seed": seed, "chosen": {"X": chosen}, "grid": {"X": [
            {"values": values, "valid_sampled999_MRR": mrr, "folder": f"f{i}"}
            for i, (values, mrr) in enumerate(scores)]}}
    tau = [{"temperature": 1.0}, {"temperature": 0.1}]
    results = {"grid": {"temperature": [1.0, 0.1]}, "seeds": [0, 1], "runs": {
        "popularity": [{"seed": None}],
        "sasrec": [entry(0, [({}, 5.0)], {}), entry(1, [({}, 6.0)], {})],
        "ifcdsr": [entry(0, zip(tau, (11.0, 12.5)), tau[1]), entry(1, zip(tau, (13.25, 12.75)), tau[0])]}}
    evaluate.print_chosen(results)
    assert capsys.readouterr().out.splitlines() == [
        "",
        "Grid points chosen on validation MRR (999 sampled negatives, %) of --grid temperature=1.0,0.1; "
        "a tie keeps the first point",
        "Row                      | target | seed 0                  | seed 1",
        "-------------------------------------------------------------------------------------",
        "SASRec                   | X      | the only point (5.00)   | the only point (6.00)",
        "IFCDSR                   | X      | temperature=0.1 (12.50) | temperature=1.0 (13.25)"]
    assert evaluate.point_name({"lr": 0.0005, "weight_decay": 1e-05, "use_image": False}) == \
        "lr=0.0005,weight_decay=1e-05,use_image=false"
