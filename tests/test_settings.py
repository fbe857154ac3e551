"""Tests of train.py's command line and rows: the presets behind --models and their shorthands, the variant that
--no-image and --no-multi-attention make of the default rows, a command line read without being changed, a setting
that acts on none of the rows, --set and --grid given several times, and the grid points at which each row trains."""
import pytest

import train
from conftest import run_cli
from train import UsageError


def test_compare_and_ablation_are_the_presets_of_models():
    for flag, preset in (("--compare", "compare"), ("--ablation", "ablation")):
        assert train.read(train.parse_args([flag])).models == preset
        assert train.choose_models(preset, False, False, "tiny", True) == list(train.PRESETS[preset])
    assert train.choose_models("sasrec,popularity", False, False, "tiny", True) == ["popularity", "sasrec"]
    with pytest.raises(UsageError, match=r"need\(s\) image embeddings, but --no-image"):
        train.choose_models("ablation", True, False, "tiny", True)


def test_no_image_and_no_multi_attention_choose_the_variant_of_the_default_rows():
    choose = train.choose_models
    assert choose(None, False, False, "demo", True) == ["popularity", "ifcdsr_id", "ifcdsr"]
    assert choose(None, False, False, "tiny", True) == ["popularity", "ifcdsr"]
    assert choose(None, True, False, "demo", True) == ["popularity", "ifcdsr_id"]
    assert choose(None, False, True, "demo", True) == ["popularity", "image_fusion"]
    assert choose(None, True, True, "tiny", True) == ["popularity", "original"]
    assert [train.variant(r.use_image, r.multi_attention) for r in train.ROWS.values() if r.ifcdsr] == [
        "original", "image_fusion", "ifcdsr_id", "ifcdsr"]


def test_reading_the_command_line_changes_nothing_in_it():
    args = train.parse_args(["--set", "q=32"])
    before = dict(vars(args))
    s = train.read(args)
    assert vars(args) == before and args.epochs is None
    assert s.cfg.epochs == train.DEMO_EPOCHS and s.cfg.q == 32 and s.seeds == [0] and s.targets == ("X", "Y")


@pytest.mark.parametrize("argv, message", [
    (("--models", "sasrec", "--set", "temperature=0.5"), "--set temperature: acts on none of the rows of --models "
     "(sasrec)"),
    (("--models", "popularity", "--set", "q=32", "lr=0.1"), "--set q, --set lr: act on none of the rows of --models "
     "(popularity)"),
    (("--models", "sasrec", "--set", "alpha=0.2", "lambda1=5"), "--set alpha, --set lambda1: act on none"),
    (("--models", "ifcdsr_id", "--set", "alpha=0.2"), "--set alpha: acts on none of the rows of --models (ifcdsr_id)"),
    (("--models", "original", "--set", "lambda1=3"), "--set lambda1: acts on none of the rows of --models (original)"),
    (("--softmax-over", "all", "--models", "original"), "--softmax-over: acts on none of the rows of --models "
     "(original)"),
    (("--models", "gru4rec", "--grid", "n_blocks=1,2"), "--grid n_blocks: acts on none of the rows of --models "
     "(gru4rec)")])
def test_a_setting_that_acts_on_none_of_the_rows_is_refused(argv, message, tiny_dir, tmp_path, capsys):
    assert run_cli("--data-dir", tiny_dir, "--device", "cpu", "--out", tmp_path / "o", *argv) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_set_and_grid_given_several_times_add_up_and_a_field_given_two_values_is_refused():
    s = train.read(train.parse_args(["--set", "q=32", "--set", "dropout=0.1", "--grid", "temperature=1,0.5",
                                     "--grid", "n_blocks=1", "--lr", "0.01", "--lr", "0.01", "--set", "lr=0.01"]))
    assert (s.cfg.q, s.cfg.dropout, s.cfg.lr) == (32, 0.1, 0.01)
    assert s.grid == {"temperature": [1.0, 0.5], "n_blocks": [1]}
    with pytest.raises(UsageError, match=r"--set q=32 and --set q=16 disagree on q; drop one of them"):
        train.read(train.parse_args(["--set", "q=32", "--set", "q=16"]))
    with pytest.raises(UsageError, match=r"--grid temperature=1.0,0.5 and --grid temperature=0.1 disagree"):
        train.read(train.parse_args(["--grid", "temperature=1,0.5", "--grid", "temperature=0.1"]))


def test_a_row_trains_at_the_distinct_points_of_the_fields_that_act_on_it():
    grid = {"n_blocks": [1, 2], "lr": [1e-3, 1e-4], "softmax_over": ["all", "domain"]}
    assert train.grid_points("gru4rec", grid) == [{"lr": 1e-3}, {"lr": 1e-4}]  # no attention blocks
    assert len(train.grid_points("sasrec", grid)) == 4
    assert len(train.grid_points("original", grid)) == 4  # one view: its softmax is over all items anyway
    assert len(train.grid_points("ifcdsr", grid)) == 8
    assert train.grid_points("popularity", grid) == [{}]
