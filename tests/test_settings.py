"""Tests of settings.py and rows.py: the presets behind --models and their shorthands, the variant that --no-image
and --no-multi-attention make of the default rows, and a command line read without being changed."""
import pytest

import train
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
