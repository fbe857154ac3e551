"""Tests of train.py: the command line, seeds, resuming, model selection on validation only, train; and a few
steps of the model lower its loss."""
import json
import re

import numpy as np
import pytest
import torch

import train
from conftest import TINY, full_batch_losses, run_cli
from data import load_scenario, make_demo
from evaluate import METRICS, PROTOCOLS
from ifcdsr import IFCDSR, Config


def results(out):
    return json.loads((out / "results.json").read_text())


def test_a_few_training_steps_lower_the_loss(tmp_path):
    scen = load_scenario(make_demo(tmp_path / "demo", seed=0, **TINY), max_len=15, use_images=True)
    torch.manual_seed(0)
    model = IFCDSR(Config(q=32), scen.items.num_x, scen.items.num_y, scen.E_img)
    model.eval()  # no dropout, so the loss is a deterministic function of the weights
    losses, _ = full_batch_losses(model, scen.train)
    assert losses[-1] < 0.98 * losses[0]


def test_cli_end_to_end_resume_and_eval_only(tiny_dir, tmp_path, capsys):
    out = tmp_path / "run"
    common = ("--data-dir", tiny_dir, "--epochs", 2, "--batch-size", 16, "--out", out)
    assert run_cli(*common) == 0
    printed = capsys.readouterr().out
    assert "Popularity" in printed and "IFCDSR" in printed and "cold X" in printed
    res = results(out)
    assert res["models"] == ["popularity", "ifcdsr"] and res["seeds"] == [0] and res["config"]["epochs"] == 2
    run = res["runs"]["ifcdsr"][0]
    for split in ("valid", "test"):
        for d in ("X", "Y"):
            assert set(run[split][d]) == set(PROTOCOLS) and set(run[split][d]["full"]) == set(METRICS)
    cold, warm = (run["test_by_target"][k]["X"] for k in ("cold", "warm"))
    test = load_scenario(tiny_dir, max_len=15, use_images=False).test
    assert cold["cases"] + warm["cases"] == int((test.target < 40).sum()) > 0  # the test cases of target X
    assert len(run["history"]["X"]) == 2 and (out / "ifcdsr" / "seed0" / "best_Y.pt").is_file()
    assert res["summary"]["ifcdsr"]["test"]["X"]["full"]["MRR"]["mean"] == run["test"]["X"]["full"]["MRR"]
    assert set(res["significance"]["rows"]) == {"popularity"} and (out / "test_ranks.npz").is_file()

    # an existing run is never overwritten without --resume
    before = (out / "results.json").read_bytes()
    assert run_cli(*common) == 2 and "--resume" in capsys.readouterr().err
    assert (out / "results.json").read_bytes() == before

    # resuming a finished run retrains nothing and reproduces the same numbers
    assert run_cli(*common, "--resume") == 0
    assert results(out)["summary"] == res["summary"]

    assert run_cli("--data-dir", tiny_dir, "--eval-only", out / "ifcdsr" / "seed0" / "best_X.pt") == 0
    assert f"MRR {run['test']['X']['sampled999']['MRR']:.2f}" in capsys.readouterr().out


def test_resume_after_interruption_gives_the_same_result(tiny_dir, tmp_path):
    common = ("--data-dir", tiny_dir, "--target", "X", "--batch-size", 16, "--no-image")
    assert run_cli(*common, "--epochs", 3, "--out", tmp_path / "straight") == 0
    # as if interrupted after one epoch: a 1-epoch run, resumed (and extended) to 3 epochs
    assert run_cli(*common, "--epochs", 1, "--out", tmp_path / "cut") == 0
    assert run_cli(*common, "--epochs", 3, "--out", tmp_path / "cut", "--resume") == 0
    a, b = (results(tmp_path / d)["runs"]["ifcdsr_id"][0] for d in ("straight", "cut"))
    assert a["test"] == b["test"] and a["valid"] == b["valid"]
    assert [h["loss"] for h in a["history"]["X"]] == [h["loss"] for h in b["history"]["X"]]
    # other settings than the schedule may not change
    assert run_cli(*common, "--epochs", 4, "--lr", 0.5, "--out", tmp_path / "cut", "--resume") == 2


def test_a_resume_from_weights_of_another_shape_is_a_message(tiny_dir, tmp_path, capsys):
    """A last_*.pt whose weights do not fit the row's model (an earlier form of the same row) is refused with
    exit code 2 and the file's name, not a traceback."""
    common = ("--data-dir", tiny_dir, "--target", "X", "--batch-size", 16, "--models", "sasrec", "--out",
              tmp_path / "run")
    assert run_cli(*common, "--epochs", 1) == 0
    last = tmp_path / "run" / "sasrec" / "seed0" / "last_X.pt"
    state = torch.load(last, weights_only=True)
    state["model"]["E.weight"] = state["model"]["E.weight"][:5]
    torch.save(state, last)
    capsys.readouterr()
    assert run_cli(*common, "--epochs", 2, "--resume") == 2
    assert f"{last}: its weights do not fit this model" in capsys.readouterr().err


def test_a_checkpoint_written_on_a_gpu_resumes_on_the_cpu(tiny_dir, tmp_path):
    """A last_*.pt whose tensors name cuda:0, as a CUDA run writes them (storages re-tagged here), with fused
    Adam's flag and more CUDA random states than there are GPUs here (8, as a machine with 8 GPUs wrote them),
    is read onto the CPU: weights, Adam's state and the CPU's random states are restored, Adam updates as a
    new CPU optimiser does, and the run ends as an uninterrupted one (which ran with --deterministic: on a CPU
    the same numbers, and the setting ends with the run)."""
    common = ("--data-dir", tiny_dir, "--target", "X", "--batch-size", 16, "--no-image", "--models", "ifcdsr_id")
    assert run_cli(*common, "--epochs", 2, "--out", tmp_path / "straight", "--deterministic") == 0
    assert results(tmp_path / "straight")["deterministic"] and not torch.are_deterministic_algorithms_enabled()
    assert run_cli(*common, "--epochs", 1, "--out", tmp_path / "cut") == 0
    last = tmp_path / "cut" / "ifcdsr_id" / "seed0" / "last_X.pt"
    state = torch.load(last, weights_only=True)
    state["rng"]["cuda"] = [torch.zeros(16, dtype=torch.uint8)] * 8
    for group in state["optimizer"]["param_groups"]:
        group["fused"] = True
    tagged, registry = [], list(torch.serialization._package_registry)
    torch.serialization.register_package(-1, lambda obj: tagged.append(1) or "cuda:0", lambda obj, loc: None)
    try:
        torch.save(state, last)
    finally:
        torch.serialization._package_registry[:] = registry
    assert tagged and b"cuda:0" in last.read_bytes()
    assert run_cli(*common, "--epochs", 2, "--out", tmp_path / "cut", "--resume") == 0
    a, b = (results(tmp_path / d)["runs"]["ifcdsr_id"][0] for d in ("straight", "cut"))
    assert a["test"] == b["test"] and [h["loss"] for h in a["history"]["X"]] == [h["loss"] for h in b["history"]["X"]]
    resumed = torch.load(last, weights_only=True)  # written by the resumed epoch: a new CPU optimiser's flags
    assert [(g["fused"], g["foreach"]) for g in resumed["optimizer"]["param_groups"]] == [(None, None)]
    assert resumed["rng"]["cuda"] is None


def test_seeds_train_each_model_once_per_seed_against_the_same_negatives(tiny_dir, tmp_path, capsys):
    """--seeds 2 --compare on a scenario without images: the rows that need none, each trained per seed in
    its own folder; popularity once; per-seed numbers differ, and mean ± std are printed."""
    out = tmp_path / "run"
    assert run_cli("--data-dir", tiny_dir, "--compare", "--no-image", "--seeds", 2, "--epochs", 1,
                   "--batch-size", 32, "--target", "Y", "--out", out) == 0
    printed = capsys.readouterr().out
    assert "--no-image: running only the rows that need no image embeddings" in printed
    res = results(out)
    assert res["models"] == ["popularity", "gru4rec", "sasrec", "ifcdsr_id"] and res["seeds"] == [0, 1]
    for model in ("gru4rec", "sasrec", "ifcdsr_id"):
        assert [r["seed"] for r in res["runs"][model]] == [0, 1]
        assert all((out / model / f"seed{s}" / "best_Y.pt").is_file() for s in (0, 1))
        a, b = (r["test"]["Y"]["full"]["MRR"] for r in res["runs"][model])
        assert a != b and res["summary"][model]["test"]["Y"]["full"]["MRR"]["n"] == 2
    assert [r["seed"] for r in res["runs"]["popularity"]] == [None]
    assert set(res["significance"]["rows"]) == {"popularity", "gru4rec", "sasrec"}
    assert res["significance"]["reference"] == "ifcdsr_id" and " ± " in printed and "mean ± std over 2 seeds" in printed


def test_model_selection_keeps_the_best_validation_epoch_and_reads_the_test_set_once(tiny_dir, tmp_path,
                                                                                     monkeypatch):
    """The kept checkpoint is the epoch of the best validation MRR (patience high enough to see all epochs),
    and the test set is ranked exactly once per target, after training ends."""
    calls = []
    rank = train.Trainer.rank

    def logged(self, split, sel=None):
        calls.append((split, self.epoch))
        return rank(self, split, sel)

    monkeypatch.setattr(train.Trainer, "rank", logged)
    out = tmp_path / "run"
    assert run_cli("--data-dir", tiny_dir, "--models", "sasrec", "--target", "X", "--epochs", 6,
                   "--batch-size", 8, "--lr", 0.01, "--out", out) == 0
    history = results(out)["runs"]["sasrec"][0]["history"]["X"]
    valid = [h["valid"]["sampled999"]["MRR"] for h in history]
    best = torch.load(out / "sasrec" / "seed0" / "best_X.pt", weights_only=True)
    assert best["epoch"] == 1 + valid.index(max(valid)) and best["valid"]["sampled999"]["MRR"] == max(valid)
    assert len(set(valid)) > 1  # a real choice was made
    assert calls == [("valid", e) for e in range(1, 7)] + [("test", 6)]  # after the last epoch


@pytest.mark.parametrize("args,message", [
    (("--alpha", "1.5"), "--alpha 1.5: alpha = 1.5: expected a number in [0, 1]"),
    (("--scenario", "nope"), "unknown scenario 'nope'"),
    (("--data-dir", "/nonexistent/x"), "/nonexistent/x/Alist.txt: cannot be read (No such file or directory)"),
    (("--seeds", "0"), "--seeds '0': expected a count K in [1, 1000]"),
    (("--seeds", "2", "--seed", "3"), "not both"),
    (("--models", "sasrec,bert4rec"), "unknown model(s) ['bert4rec']"),
    (("--models", "ifcdsr", "--no-image"), "need(s) image embeddings"),
])
def test_cli_bad_input_exits_2_with_a_message(args, message, capsys, tmp_path):
    assert run_cli(*args, "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_an_image_row_without_embeddings_is_refused(tiny_dir, tmp_path, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in tiny_dir.iterdir():
        if f.name != "image_embeddings.npy" and f.is_file():
            (bare / f.name).write_bytes(f.read_bytes())
    assert run_cli("--data-dir", bare, "--models", "sasrec,ifcdsr", "--out", tmp_path / "o") == 2
    assert "the scenario has no image_embeddings.npy" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_cli_rejects_a_checkpoint_of_another_scenario(tiny_dir, tmp_path, capsys):
    other = make_demo(tmp_path / "other", seed=1, num_x=41, num_y=50, num_users=90, image_dim=8)
    assert run_cli("--data-dir", tiny_dir, "--target", "X", "--epochs", 1, "--out", tmp_path / "r") == 0
    assert run_cli("--data-dir", other, "--eval-only", tmp_path / "r" / "ifcdsr" / "seed0" / "best_X.pt") == 2
    assert "41+50" in capsys.readouterr().err


def test_bf16_autocast_trains_on_the_gpus_branches_and_evaluation_ranks_in_fp32(tiny_dir, tmp_path, monkeypatch):
    """On CUDA the Trainer trains under bf16 autocast. CPU autocast takes the same branches of fused_loss.py
    (the bf16 product copied into the fp32 logits, dE accumulated in fp32), here on the bounded path (two
    positions a chunk). Evaluation runs with autocast off whatever the caller has on: no scoring product runs
    under autocast, and the ranks are those of a plain fp32 evaluation."""
    import fused_loss
    scen = load_scenario(tiny_dir, max_len=15, use_images=True)
    cfg = train.Config(q=8, score_chunk=2 * scen.items.num_items, batch_size=16, target="X")
    trainer = train.Trainer("ifcdsr", cfg, scen, torch.device("cpu"), tmp_path, resume=False)
    monkeypatch.setattr(train.Trainer, "autocast", lambda self: torch.autocast("cpu", dtype=torch.bfloat16))
    logits, calls = fused_loss._logits, []
    monkeypatch.setattr(fused_loss, "_logits", lambda a, E, out: calls.append(
        torch.is_autocast_enabled("cpu")) or logits(a, E, out))
    trainer.train_epoch()
    assert calls and all(calls)  # every training product under autocast
    calls.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = trainer.rank("test")
    assert calls and not any(calls)
    fp32 = trainer.rank("test")
    assert all(torch.equal(under_autocast[p], fp32[p]) for p in PROTOCOLS)


def test_set_overrides_any_config_field_and_is_recorded(tiny_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli("--data-dir", tiny_dir, "--set", "q=32", "dropout=0.1", "epochs=1", "--epochs", 1, "--target", "X",
                   "--no-image", "--batch-size", 32, "--device", "cpu", "--out", out) == 0
    printed = capsys.readouterr().out
    assert "training 1 of 1" in printed and "trainings: 1 (1 model(s) x 1 seed(s) x 1 target(s))" in printed
    assert results(out)["config"]["q"] == 32 and results(out)["config"]["dropout"] == 0.1
    state = train.load_checkpoint(out / "ifcdsr_id" / "seed0" / "best_X.pt")
    assert (state["config"]["q"], state["config"]["dropout"], state["model"]["E_id.weight"].shape[1]) == (32, 0.1, 32)


@pytest.mark.parametrize("args, message", [
    (("--set", "nosuch=1"), "--set nosuch=1: expected FIELD=VALUE, FIELD one of q,"),
    (("--set", "q=0"), "--set q=0: q = 0: expected an integer in [1, 4,096]"),
    (("--set", "q=1.5"), "--set q=1.5: expected an integer for q (default 256), found '1.5'"),
    (("--set", "target=Y"), "(the target domain is --target's)."),
    (("--set", "lr=0.001", "--lr", "0.0005"), "--set lr=0.001 and --lr 0.0005 disagree"),
    (("--set", "temperature=2", "--literal"), "--set temperature=2 and --literal (temperature=1.0, as printed) "
     "disagree on temperature; drop one of them"),
    (("--export", "x.tsv"), "--export FILE needs --eval-only CKPT")])
def test_bad_set_values_exit_2_naming_them(args, message, capsys):
    assert run_cli("--device", "cpu", *args) == 2 and message in capsys.readouterr().err


def test_export_writes_the_top_k_with_the_ranks_of_evaluation(tiny_run, tmp_path, capsys):
    out, _ = tiny_run
    path = tmp_path / "top.tsv"
    assert run_cli("--eval-only", out / "ifcdsr" / "seed0" / "best_Y.pt", "--export", path, "--k", 3,
                   "--device", "cpu") == 0
    assert "as the checkpoint records" in capsys.readouterr().out  # no --data-dir: the checkpoint's data
    head, *rows = [line.split("\t") for line in path.read_text().splitlines()]
    assert head == ["user", "history", "ground_truth", "rank_sampled999", "rank_full",
                    "item_1", "score_1", "item_2", "score_2", "item_3", "score_3"]
    with np.load(out / "test_ranks.npz") as npz:
        for col, p in ((3, "sampled999"), (4, "full")):
            assert [float(r[col]) for r in rows] == npz[f"ifcdsr/0/Y/{p}"].tolist()
    scores = [[float(v) for v in r[6::2]] for r in rows]
    assert all(s == sorted(s, reverse=True) for s in scores)  # best first
    assert all(r[5] == r[2] for r in rows if r[4] == "1.0")  # rank 1 in full ranking: the ground truth is first
    assert all(r[5].startswith("DEMOB") and len(r[1].split()) >= 1 for r in rows)  # Y items, as ASINs
    assert run_cli("--eval-only", out / "ifcdsr" / "seed0" / "best_Y.pt", "--export", path) == 2  # never overwritten


def test_the_ctrl_c_message_gives_the_command_that_resumes(tmp_path):
    message = train.interrupted(["--epochs", "3", "--out=elsewhere", "--set", "q=32"], tmp_path)
    assert message.endswith(f"python train.py --epochs 3 --set q=32 --resume --out {tmp_path}")
    assert "run the same command again" in train.interrupted([], None)


def test_the_header_counts_the_trainings_and_each_one_is_numbered(tiny_run):
    printed = tiny_run[1]
    assert f"trainings: 2 (1 model(s) x 1 seed(s) x 2 target(s)); {torch.get_num_threads()} CPU threads" in printed
    assert "\n[ifcdsr seed 0 X] training 1 of 2\n" in printed
    assert "\n[ifcdsr seed 0 Y] training 2 of 2\n" in printed


def test_grid_trains_each_row_at_the_points_of_its_fields_and_keeps_the_best_on_validation(tiny_dir, tmp_path,
                                                                                          capsys, monkeypatch):
    """--grid temperature=1,0.1 with two seeds: IFCDSR ID only trains at both points (τ acts on it), SASRec once
    (τ does not act on it); per row, seed and target the kept point is the one of the best validation MRR (the
    first on a tie), its checkpoint is the row's, and the test set is ranked once, with it."""
    tested = []
    rank = train.Trainer.rank
    monkeypatch.setattr(train.Trainer, "rank", lambda self, split, sel=None: (
        split == "test" and tested.append(sel.best.parent)) or rank(self, split, sel))
    out = tmp_path / "run"
    assert run_cli("--data-dir", tiny_dir, "--models", "sasrec,ifcdsr_id", "--target", "X", "--epochs", 1,
                   "--batch-size", 32, "--seeds", 2, "--set", "q=16", "--grid", "temperature=1,0.1", "--out", out) == 0
    printed = capsys.readouterr().out
    assert "trainings: 6 (2 model(s) x 2 seed(s) x 1 target(s); grid points: sasrec 1, ifcdsr_id 2)" in printed
    assert "\n[ifcdsr_id seed 1 X temperature=0.1] training 6 of 6" in printed
    res = results(out)
    assert res["grid"] == {"temperature": [1.0, 0.1]}
    for model, names in (("sasrec", [""]), ("ifcdsr_id", ["temperature=1.0", "temperature=0.1"])):
        for seed, entry in zip((0, 1), res["runs"][model]):
            folder = out / model / f"seed{seed}"
            points = entry["grid"]["X"]
            assert [p["folder"] for p in points] == [str(folder / name) if name else str(folder) for name in names]
            assert all((folder / name / "best_X.pt").is_file() for name in names)
            scores = [p["valid_sampled999_MRR"] for p in points]
            kept = points[scores.index(max(scores))]  # the first of the best
            assert entry["chosen"]["X"] == kept["values"] and entry["checkpoint"]["X"] == kept["folder"] + "/best_X.pt"
            assert entry["valid"]["X"]["sampled999"]["MRR"] == max(scores)
            assert entry["config"]["X"]["temperature"] == kept["values"].get("temperature", 1.0)
    assert [p["values"] for p in res["runs"]["ifcdsr_id"][0]["grid"]["X"]] == [{"temperature": 1.0},
                                                                               {"temperature": 0.1}]
    assert sorted(map(str, tested)) == sorted(str(out / m / f"seed{s}" / report_name(res["runs"][m][s]))
                                              for m in ("sasrec", "ifcdsr_id") for s in (0, 1))
    chosen = [line for line in printed.splitlines() if line.startswith(("SASRec ", "IFCDSR ID only "))][-2:]
    assert chosen[0].startswith("SASRec") and "| seed 0: " not in chosen[0] and "the only point" in chosen[0]
    assert "Grid points chosen on validation MRR" in printed and "of --grid temperature=1.0,0.1" in printed
    assert all(f"{report_name(e)} ({e['valid']['X']['sampled999']['MRR']:.2f})" in chosen[1]
               for e in res["runs"]["ifcdsr_id"])


def report_name(entry: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in entry["chosen"]["X"].items())


def test_grid_run_interrupted_between_points_resumes_point_by_point(tiny_dir, tmp_path, monkeypatch, capsys):
    """A --grid run of two points stopped (Ctrl-C) in the second point's second epoch continues with --resume:
    the finished point is read back from its checkpoints, the second continues after its first epoch, and the
    results equal those of a run that was never stopped. A resume with other settings is refused, naming a
    point's checkpoint."""
    common = ("--data-dir", tiny_dir, "--models", "ifcdsr_id", "--target", "X", "--epochs", 2, "--batch-size", 32,
              "--grid", "temperature=1,0.1", "dropout=0.0", "--set", "q=16")
    assert run_cli(*common, "--out", tmp_path / "straight") == 0
    train_epoch, epochs = train.Trainer.train_epoch, []

    def stopped(self):
        epochs.append((self.cfg.temperature, self.epoch + 1))
        if len(epochs) == 4:
            raise KeyboardInterrupt
        return train_epoch(self)

    monkeypatch.setattr(train.Trainer, "train_epoch", stopped)
    cut = tmp_path / "cut"
    assert run_cli(*common, "--out", cut) == 130 and epochs == [(1.0, 1), (1.0, 2), (0.1, 1), (0.1, 2)]
    monkeypatch.setattr(train.Trainer, "train_epoch", train_epoch)
    first, second = (cut / "ifcdsr_id" / "seed0" / f"temperature={t},dropout=0.0" for t in ("1.0", "0.1"))
    capsys.readouterr()
    assert run_cli(*common, "n_blocks=1", "--out", cut, "--resume") == 2
    refused = capsys.readouterr().err
    assert f"{second / 'last_X.pt'}: was written by ifcdsr_id with a different config (n_blocks)" in refused
    assert run_cli(*common, "--out", cut, "--resume") == 0
    printed = capsys.readouterr().out
    assert f"resumed from {first / 'last_X.pt'} after epoch 2" in printed
    assert f"resumed from {second / 'last_X.pt'} after epoch 1" in printed
    a, b = (results(tmp_path / d)["runs"]["ifcdsr_id"][0] for d in ("straight", "cut"))
    assert a["test"] == b["test"] and a["chosen"] == b["chosen"]
    assert [h["loss"] for h in a["history"]["X"]] == [h["loss"] for h in b["history"]["X"]]
    assert [p["valid_sampled999_MRR"] for p in a["grid"]["X"]] == [p["valid_sampled999_MRR"] for p in b["grid"]["X"]]


def test_a_merged_baseline_trains_once_for_both_targets_as_one_training_per_target_would(tiny_dir, tmp_path,
                                                                                        monkeypatch, capsys):
    """GRU4Rec on S^{X+Y} predicts every next item whatever the target (train.Row.shared): one training for both
    target domains, each validated and stopped on its own (here Y stops first and X trains on), gives bit for
    bit the checkpoints, best epochs, validation and test results of a run per target domain. Stopped (Ctrl-C)
    in its third epoch, it resumes as one training; a Y checkpoint at another epoch than X's trains apart."""
    common = ("--data-dir", tiny_dir, "--models", "gru4rec", "--batch-size", 16, "--set", "q=16", "--patience", 1,
              "--epochs", 6)
    assert run_cli(*common, "--out", tmp_path / "both") == 0
    printed = capsys.readouterr().out
    assert "trainings: 1 (1 model(s) x 1 seed(s) x 2 target(s); gru4rec: one training for both targets)" in printed
    assert re.search(r"\[gru4rec seed 0 X\+Y\] epoch   1 \| L\^X\+Y \S+ \| X valid MRR .* \| Y valid MRR ", printed)
    for target in "XY":
        assert run_cli(*common, "--target", target, "--out", tmp_path / target) == 0

    both = results(tmp_path / "both")["runs"]["gru4rec"][0]
    assert len(both["history"]["Y"]) < len(both["history"]["X"])
    for target in "XY":
        same_results(tmp_path / "both", tmp_path / target, "gru4rec")
    capsys.readouterr()
    assert run_cli(*common, "--out", tmp_path / "both", "--resume") == 0  # finished: read back, nothing trains
    printed = capsys.readouterr().out
    assert [printed.count(f"resumed from {tmp_path / 'both' / 'gru4rec' / 'seed0' / f'last_{t}.pt'}") for t in "XY"
            ] == [1, 1] and "valid MRR" not in printed

    train_epoch, calls = train.Trainer.train_epoch, []

    def stopped(self):
        calls.append(self.cfg.target)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return train_epoch(self)

    monkeypatch.setattr(train.Trainer, "train_epoch", stopped)
    assert run_cli(*common, "--out", tmp_path / "cut") == 130 and calls == ["X", "X", "X"]
    monkeypatch.setattr(train.Trainer, "train_epoch", train_epoch)
    capsys.readouterr()
    assert run_cli(*common, "--out", tmp_path / "cut", "--resume") == 0
    printed = capsys.readouterr().out
    for target in "XY":
        assert f"resumed from {tmp_path / 'cut' / 'gru4rec' / 'seed0' / f'last_{target}.pt'} after epoch 2" in printed
    assert "X valid MRR" in printed
    same_results(tmp_path / "both", tmp_path / "cut", "gru4rec")

    # X trained alone for 2 epochs, then both: Y (no checkpoint, epoch 0) trains apart, after X
    assert run_cli(*common[:-1], 2, "--target", "X", "--out", tmp_path / "apart") == 0
    capsys.readouterr()
    assert run_cli(*common, "--out", tmp_path / "apart", "--resume") == 0
    printed = capsys.readouterr().out
    assert "X valid MRR" not in printed and printed.count("[gru4rec seed 0 X+Y] epoch   1 ") == 1
    same_results(tmp_path / "both", tmp_path / "apart", "gru4rec")


def same_results(a, b, model: str) -> None:
    """Two run folders hold the same results of `model`, seed 0, for every target domain in b: test and
    validation metrics, best epochs, losses, validation histories, and best_*.pt weights bit for bit."""
    run, other = (results(d)["runs"][model][0] for d in (a, b))
    for t in other["test"]:
        assert (run["test"][t], run["valid"][t], run["best_epoch"][t]) == (
            other["test"][t], other["valid"][t], other["best_epoch"][t])
        assert [(h["loss"], h.get("valid")) for h in run["history"][t]] == [
            (h["loss"], h.get("valid")) for h in other["history"][t]]
        w, v = (torch.load(d / model / "seed0" / f"best_{t}.pt", weights_only=True)["model"] for d in (a, b))
        assert w.keys() == v.keys() and all(torch.equal(w[k], v[k]) for k in w)


def test_a_merged_baseline_whose_x_stops_first_trains_on_for_y_as_a_training_for_y_alone(tiny_dir, tmp_path):
    """The other order of stopping (above, Y stops first): X stops at epoch 3 and the training goes on for Y
    alone, with the same batches, which a training for Y alone also draws."""
    common = ("--data-dir", tiny_dir, "--models", "gru4rec", "--batch-size", 16, "--set", "q=16", "--patience", 1,
              "--epochs", 6, "--lr", 0.01)
    for target in ("both", "X", "Y"):
        assert run_cli(*common, "--target", target, "--out", tmp_path / target) == 0
    both = results(tmp_path / "both")["runs"]["gru4rec"][0]
    assert len(both["history"]["X"]) < len(both["history"]["Y"])
    for target in "XY":
        same_results(tmp_path / "both", tmp_path / target, "gru4rec")


def test_a_target_only_row_trains_once_per_target_domain(tiny_dir, tmp_path, capsys):
    """SASRec on the target domain alone reads and predicts other items for each target domain: two trainings,
    each the same as a run of that target domain alone."""
    common = ("--data-dir", tiny_dir, "--models", "sasrec_target", "--batch-size", 16, "--set", "q=16", "--epochs", 2)
    assert run_cli(*common, "--out", tmp_path / "both") == 0
    assert "trainings: 2 (1 model(s) x 1 seed(s) x 2 target(s))" in capsys.readouterr().out
    for target in "XY":
        assert run_cli(*common, "--target", target, "--out", tmp_path / target) == 0
        same_results(tmp_path / "both", tmp_path / target, "sasrec_target")


def test_a_tie_on_validation_in_a_grid_keeps_the_first_point(tiny_dir, tmp_path):
    """Points that train alike (patience 5 or 6 within 2 epochs) tie on validation: the first, in the grid's
    order, is kept."""
    for order in ("5,6", "6,5"):
        assert run_cli("--data-dir", tiny_dir, "--models", "ifcdsr_id", "--target", "X", "--batch-size", 16,
                       "--epochs", 2, "--set", "q=8", "--grid", f"patience={order}", "--out", tmp_path / order) == 0
        run = results(tmp_path / order)["runs"]["ifcdsr_id"][0]
        assert len({p["valid_sampled999_MRR"] for p in run["grid"]["X"]}) == 1
        assert run["chosen"]["X"] == {"patience": int(order[0])}


@pytest.mark.parametrize("args, message", [
    (("--grid", "nosuch=1,2"), "--grid nosuch=1: expected FIELD=VALUE, FIELD one of q,"),
    (("--grid", "temperature"), "--grid temperature: gives no value; expected FIELD=V1,V2,..."),
    (("--grid", "temperature="), "--grid temperature=: gives no value"),
    (("--grid", "temperature=1,1.0"), "--grid temperature=1,1.0: lists 1.0 twice"),
    (("--grid", "temperature=1", "temperature=0.1"), "--grid temperature=1.0 and --grid temperature=0.1 disagree"),
    (("--grid", "temperature=1,x"), "--grid temperature=x: expected a number for temperature (default 1.0), found 'x'"),
    (("--grid", "temperature=1,0"), "--grid: at temperature=0.0: temperature = 0.0: expected a number in [0.01, 100]"),
    (("--grid", "q=6,8", "--set", "n_heads=4"), "--grid: at q=6: n_heads = 4: expected a divisor of q = 6"),
    (("--grid", "seed=0,1"), "--grid seed=0,1: seed cannot be searched: the seeds are --seeds K or a,b,c"),
    (("--grid", "use_image=true,false"), "use_image cannot be searched: each row has its own; choose rows with "
     "--models"),
    (("--grid", "max_len=10,15"), "--grid max_len=10,15: max_len cannot be searched"),
    (("--grid", "--lr", "0.01"), "--lr 0.01 and --grid lr=0.001,0.0005,0.0001 disagree on lr"),
    (("--grid", "lr=1e-3,1e-4", "--lr", "0.01"), "--lr 0.01 and --grid lr=0.001,0.0001 disagree on lr"),
    (("--grid", "q=16,32", "--set", "q=8"), "--set q=8 and --grid q=16,32 disagree on q"),
    (("--grid", "temperature=1,0.1", "--literal"), "--literal (temperature=1.0, as printed) and --grid "
     "temperature=1.0,0.1 disagree"),
    (("--grid", "temperature=1,0.1", "--models", "sasrec"), "--grid temperature: acts on none of the rows of "
     "--models (sasrec)"),
    (("--grid", "alpha=0.5,0.7", "--no-image"), "--grid alpha: acts on none of the rows of --no-image"),
    (("--grid", "--models", "popularity"), "--grid: acts on none of the rows of --models (popularity)")])
def test_bad_grid_arguments_exit_2_naming_them(args, message, tiny_dir, tmp_path, capsys):
    assert run_cli("--data-dir", tiny_dir, "--device", "cpu", "--out", tmp_path / "o", *args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not (tmp_path / "o").exists()


def test_a_run_of_one_row_prints_no_significance_table(tiny_dir, tmp_path, capsys):
    assert run_cli("--data-dir", tiny_dir, "--models", "ifcdsr_id", "--target", "X", "--epochs", 1, "--batch-size", 32,
                   "--set", "q=8", "--out", tmp_path / "run") == 0
    printed = capsys.readouterr().out
    assert "IFCDSR ID only  " in printed and "95% interval" not in printed and "paired bootstrap" not in printed
