"""Tests for tools/embed.py: image discovery, encoding into E_img, the missing-image policy, resuming from
partial chunks and the command's exit codes. CPU only, with the tiny random CLIP of test_clip_loader.py.
"""
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import clip_loader as cl
from tools import embed
from clip_loader import CLIPError
from data import DataError
from test_clip_loader import save_state_dict, tiny_model

ROOT = Path(__file__).resolve().parent.parent  # the project


def make_scenario(folder: Path, weights_seed=0):
    """8 items (X: 4, Y: 4) with a jpg, a jpeg, an RGBA png, a webp, an upper-case .JPG, a corrupt file,
    a truncated JPEG and no image; returns the weight file."""
    asins = [f"A{i:03d}" for i in range(4)] + [f"B{i:03d}" for i in range(4)]
    (folder / "Alist.txt").write_text("".join(f"{900 + i}\t{a}\t{i}\n" for i, a in enumerate(asins[:4])))
    (folder / "Blist.txt").write_text("".join(f"{800 + i}\t{a}\t{i}\n" for i, a in enumerate(asins[4:])))
    images = folder / "images"
    images.mkdir()
    rng = np.random.default_rng(0)

    def picture(mode="RGB"):
        return Image.fromarray(rng.integers(0, 256, (48, 64, len(mode)), dtype=np.uint8), mode)

    picture().save(images / "A000.jpg")
    picture().save(images / "A001.jpeg")
    picture("RGBA").save(images / "A002.png")
    picture().save(images / "A003.webp")
    picture().save(images / "B000.JPG", format="JPEG")
    (images / "B001.jpg").write_bytes(os.urandom(500))  # corrupt
    buffer = io.BytesIO()
    picture().save(buffer, format="JPEG")
    (images / "B002.jpg").write_bytes(buffer.getvalue()[:300])  # truncated; B003 has no image
    (images / "failures.tsv").write_text("not an image\n")
    return save_state_dict(tiny_model(weights_seed), folder / "weights.pt")


def test_find_images_prefers_jpg_ignores_suffix_case_and_takes_only_files(tmp_path):
    """X has .jpeg, .JPG and .png files: .JPG wins (.jpg first, case ignored); Y has only .webp; Z only a .txt;
    W.jpg is a folder, so W has no image."""
    for name in ("X.jpeg", "X.JPG", "X.png", "Y.webp", "Z.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "W.jpg").mkdir()
    assert embed.find_images(tmp_path, ["X", "Y", "Z", "W"]) == [tmp_path / "X.JPG", tmp_path / "Y.webp", None, None]


def run_embed(folder, **options):
    return embed.embed(folder, folder / "images", weights=folder / "weights.pt", device="cpu", workers=0, **options)


def test_embed_encodes_images_and_records_missing_ones(tmp_path, capsys):
    weights = make_scenario(tmp_path)
    code = embed.main(["--scenario-dir", str(tmp_path), "--images", str(tmp_path / "images"),
                       "--weights", str(weights), "--device", "cpu", "--batch-size", "3", "--workers", "2"])
    assert code == 0
    E_img = np.load(tmp_path / "image_embeddings.npy")
    assert E_img.shape == (8, 32) and E_img.dtype == np.float32
    model, preprocess = cl.load(weights, "cpu")
    images = tmp_path / "images"
    for gid, name in enumerate(["A000.jpg", "A001.jpeg", "A002.png", "A003.webp", "B000.JPG"]):
        with torch.inference_mode():
            expected = model.encode_image(preprocess(Image.open(images / name))[None])[0].numpy()
        np.testing.assert_allclose(E_img[gid], expected, atol=1e-5)
    assert not E_img[5:].any()
    lines = (tmp_path / "image_embeddings.missing.tsv").read_text().splitlines()
    assert lines[0] == "global_id\tasin\treason\trow"
    rows = [line.split("\t") for line in lines[1:]]
    assert [r[:2] for r in rows] == [["5", "B001"], ["6", "B002"], ["7", "B003"]]
    assert rows[0][2].startswith("unreadable image: ") and rows[1][2].startswith("unreadable image: ")
    assert rows[2][2:] == ["no image file", "zero"]
    assert not (tmp_path / "image_embeddings.partial").exists()
    out = capsys.readouterr().out
    assert "encoded 5 of 8 items" in out and "no image file 1, unreadable image 2" in out and "(8, 32)" in out


def test_embed_resumes_after_interruption_to_the_same_result(tmp_path):
    """Chunks of 3 items: [0, 3), [3, 6), [6, 8). Batch size 1 makes each image's computation identical."""
    once, twice = tmp_path / "once", tmp_path / "twice"
    once.mkdir(), twice.mkdir()
    make_scenario(once), make_scenario(twice)
    run_embed(once, chunk_size=3, batch_size=1)

    class Stop(Exception):
        pass

    def stop(chunk):
        raise Stop

    with pytest.raises(Stop):
        run_embed(twice, chunk_size=3, batch_size=1, after_chunk=stop)
    assert not (twice / "image_embeddings.npy").exists()
    assert sorted(p.name for p in (twice / "image_embeddings.partial").glob("chunk_*")) == ["chunk_000000.npz"]

    other_weights = save_state_dict(tiny_model(seed=5), twice / "other.pt")
    with pytest.raises(CLIPError, match="other weights"):
        embed.embed(twice, twice / "images", weights=other_weights, device="cpu", workers=0, chunk_size=3)

    saved = []
    run_embed(twice, chunk_size=3, batch_size=1, after_chunk=saved.append)
    assert saved == [1, 2]  # chunk 0 was not recomputed
    assert np.array_equal(np.load(once / "image_embeddings.npy"), np.load(twice / "image_embeddings.npy"))
    assert (once / "image_embeddings.missing.tsv").read_text() == (twice / "image_embeddings.missing.tsv").read_text()


def test_embed_missing_text_fills_rows_from_titles(tmp_path):
    weights = make_scenario(tmp_path)
    titles = ["Oat Flakes", "Tea", "Honey", "Rice", "Knife", "Frying Pan", "", "Whisk &amp; Bowl"]
    (tmp_path / "items.tsv").write_text("global_id\tdomain\tasin\ttitle\timage_url\n" + "".join(
        f"{g}\t{'XY'[g >= 4]}\t{'AB'[g >= 4]}{g % 4:03d}\t{t}\thttp://x/{g}.jpg\n" for g, t in enumerate(titles)))
    run_embed(tmp_path, missing="text")
    E_img = np.load(tmp_path / "image_embeddings.npy")
    model, _ = cl.load(weights, "cpu")
    with torch.inference_mode():
        expected = model.encode_text(cl.tokenize(["a photo of Frying Pan.", "a photo of Whisk & Bowl."])).numpy()
    np.testing.assert_allclose(E_img[[5, 7]], expected, atol=1e-5)
    assert not E_img[6].any()  # unreadable image and no title: stays zero
    rows = [line.split("\t") for line in (tmp_path / "image_embeddings.missing.tsv").read_text().splitlines()[1:]]
    assert [(r[0], r[3]) for r in rows] == [("5", "text"), ("6", "zero"), ("7", "text")]

    (tmp_path / "items.tsv").write_text("global_id\tdomain\tasin\ttitle\timage_url\n0\tX\tWRONG\tTea\t\n")
    with pytest.raises(DataError, match=r"items.tsv:2: expected .* found '0\\tX\\tWRONG"):
        run_embed(tmp_path, missing="text")


def test_embed_bad_input_exits_2_without_traceback_or_damage(tmp_path):
    weights = make_scenario(tmp_path)
    previous = tmp_path / "image_embeddings.npy"
    np.save(previous, np.ones((8, 32), np.float32))
    before = previous.read_bytes()
    command = [sys.executable, "-m", "tools.embed", "--scenario-dir", str(tmp_path),
               "--images", str(tmp_path / "images"), "--weights", str(weights), "--missing", "text"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: --missing text reads item titles from") and "items.tsv" in result.stderr
    assert "Traceback" not in result.stderr and previous.read_bytes() == before
    assert embed.main(["--scenario-dir", str(tmp_path / "nowhere"), "--images", str(tmp_path / "images"),
                       "--weights", str(weights)]) == 2
    assert embed.main(["--scenario-dir", str(tmp_path), "--images", str(tmp_path / "nowhere"),
                       "--weights", str(weights)]) == 2
    assert previous.read_bytes() == before


def test_embed_without_a_working_torchvision_exits_2_with_the_install_that_matches(tmp_path, monkeypatch, capsys):
    from test_clip_loader import without_torchvision
    weights = make_scenario(tmp_path)
    monkeypatch.setattr("builtins.__import__", without_torchvision(RuntimeError("operator torchvision::nms does not "
                                                                                "exist")))
    assert embed.main(["--scenario-dir", str(tmp_path), "--images", str(tmp_path / "images"), "--weights",
                       str(weights), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: preprocessing images needs torchvision, and its import failed (RuntimeError: "
                          "operator torchvision::nms does not exist)") and "pip install torchvision==" in err
    assert not (tmp_path / "image_embeddings.npy").exists()
