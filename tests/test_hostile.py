"""Files are data, never code, and every command survives hostile input.

Each command (train.py, tools/amazon.py images and build, tools/embed.py) is fed bad files that the tests
write themselves. Every case must end with exit code 2 and a message naming the file (and the line where
there is one), or, where the command skips bad records by design, exit code 0 and a counted warning; never a
traceback, never code from a file run, and never an existing output changed (run folders, image embeddings,
partial embed chunks, built scenarios are compared byte for byte).
"""
import contextlib
import errno
import gzip
import hashlib
import io
import json
import math
import os
import pickle
import resource
import shutil
import signal
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from tools import amazon
import clip_loader
from tools import embed
import train
from conftest import line, run_cli
from data import make_demo, read_items
from test_amazon import write_example, write_lines
from test_embed import make_scenario

pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # the bomb cases
GARBAGE = bytes(range(256)) * 16  # NUL, control bytes and invalid UTF-8
OVERLONG = b"9" * (10 << 20)  # a 10 MB line without a newline


class Exploit:
    """Unpickles as os.system('touch MARKER'): if the marker appears, a file ran code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def snapshot(*paths: Path) -> dict:
    """relative path -> sha256 (or the link target, or 'dir') of everything under `paths`, links not followed."""
    out = {}
    for top in paths:
        for root, dirs, files in os.walk(top):
            for name in dirs + files:
                p = Path(root) / name
                if name == train.LOCK and p.is_file():
                    continue  # a run folder's lock file: it names the last process that locked the folder
                out[str(p)] = (f"-> {os.readlink(p)}" if p.is_symlink() else "dir" if p.is_dir()
                               else hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "special")
        if top.is_file():
            out[str(top)] = hashlib.sha256(top.read_bytes()).hexdigest()
    return out


def on_alarm(signum, frame):
    raise AssertionError("the command hangs: still running after 60 s")


def call(main, argv, capsys, *protected: Path) -> tuple[int, str]:
    """Runs a command's main in this process: its exit code and its output, after checking that nothing
    escaped as a traceback and that nothing under `protected` changed. A command that hangs (a FIFO read)
    fails the test after 60 s instead of stopping the suite."""
    before = snapshot(*protected)
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(60)
    try:
        code = main([str(a) for a in argv])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    printed = capsys.readouterr()
    text = printed.out + printed.err
    assert "Traceback" not in text
    assert snapshot(*protected) == before
    return code, text


def put(path: Path, content) -> None:
    """Replaces `path` by bytes, a folder ('dir'), a symlink to itself ('loop'), a FIFO ('fifo') or a symlink
    to /dev/zero ('zero')."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
    if content == "dir":
        path.mkdir()
    elif content == "loop":
        path.symlink_to(path.name)
    elif content == "fifo":
        os.mkfifo(path)
    elif content == "zero":
        path.symlink_to("/dev/zero")
    else:
        path.write_bytes(content)


def torch_file_with_pickle(path: Path, payload) -> Path:
    """A torch.save zip whose data.pkl is `payload` pickled."""
    torch.save({"x": torch.zeros(1)}, path)
    with zipfile.ZipFile(path) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    with zipfile.ZipFile(path, "w") as z:
        for name, content in entries.items():
            z.writestr(name, pickle.dumps(payload, protocol=2) if name.endswith("data.pkl") else content)
    return path


def png_header_only(width: int, height: int) -> bytes:
    """A 1-bit grayscale PNG of width x height whose pixels are all zero (so it compresses to almost nothing)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = zlib.compress(b"\0" * ((1 + (width + 7) // 8) * height), 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


# ----------------------------------------------------------------------------- train.py


@pytest.fixture(scope="module")
def trained(tiny_dir, tmp_path_factory):
    """A finished run of SASRec on the tiny scenario: the run folder the bad cases must leave alone."""
    out = tmp_path_factory.mktemp("run") / "run"
    assert run_cli("--data-dir", tiny_dir, "--models", "sasrec", "--target", "X", "--epochs", 1,
                   "--batch-size", 32, "--out", out) == 0
    return out


def valid_line(data: bytes) -> bytes:
    return data.split(b"\n")[0] + b"\n"


TRAIN_DATA = [  # (case, file of the scenario, content from the file's good bytes, expected message)
    ("empty file", "Alist.txt", lambda good: b"", "Alist.txt: the file is empty"),
    ("binary garbage", "traindata_new.txt", lambda good: GARBAGE, "traindata_new.txt:2: not UTF-8 text (byte 0x80"),
    ("truncated .gz", "validdata_new.txt", lambda good: gzip.compress(good)[:60], "validdata_new.txt:1: not UTF-8"),
    ("valid gzip of garbage", "testdata_new.txt", lambda good: gzip.compress(GARBAGE), "testdata_new.txt:1: not UTF-8"),
    ("invalid UTF-8 in a sequence file", "traindata_new.txt",
     lambda good: valid_line(good) + b"7\t7\t1|5|caf\xe9|\t2|6|x|\n", "traindata_new.txt:2: not UTF-8 text (byte 0xe9"),
    ("overlong line", "traindata_new.txt", lambda good: OVERLONG,
     "traindata_new.txt:1: expected 'user<TAB>inter_id<TAB>item|unix_ts|date|<TAB>...' with a user"),
    ("negative item id", "traindata_new.txt", lambda good: b"7\t7\t-3|5|d|\t2|6|d|\n",
     "traindata_new.txt:1: expected an interaction 'item|unix_ts|date|' with an integer time and an item id in 0..89"),
    ("non-integer item id", "validdata_new.txt", lambda good: b"7\t7\t1.5|5|d|\t2|6|d|\n",
     "validdata_new.txt:1: expected an interaction"),
    ("timestamp that is not a number", "testdata_new.txt", lambda good: b"7\t7\t1|soon|d|\t2|6|d|\n",
     "testdata_new.txt:1: expected an interaction"),
    ("item id out of range", "traindata_new.txt", lambda good: b"7\t7\t1|5|d|\t99999|6|d|\n",
     "traindata_new.txt:1: expected an interaction 'item|unix_ts|date|' with an integer time and an item id in 0..89, "
     "an item of Alist+Blist (the right scenario?), found '99999|6|d|'"),
    ("blank user column", "traindata_new.txt", lambda good: b"\t7\t1|5|d|\t2|6|d|\t3|7|d|\n",
     "traindata_new.txt:1: expected 'user<TAB>inter_id<TAB>item|unix_ts|date|<TAB>...' with a user"),
    ("blank interaction id column", "validdata_new.txt", lambda good: b"7\t \t1|5|d|\t2|6|d|\t3|7|d|\n",
     "validdata_new.txt:1: expected 'user<TAB>inter_id<TAB>item|unix_ts|date|<TAB>...' with a user"),
    ("an empty interaction field", "testdata_new.txt", lambda good: b"7\t7\t1|5|d|\t\t2|6|d|\n",
     "testdata_new.txt:1: expected an interaction 'item|unix_ts|date|'"),
    ("a blank ASIN", "Blist.txt", lambda good: b"200\t\t0\n",
     "Blist.txt:1: expected 'raw_id<TAB>ASIN<TAB>local_index'"),
    ("a folder named like the file", "Blist.txt", lambda good: "dir", "Blist.txt: cannot be read (Is a directory)"),
    ("symlink loop", "Alist.txt", lambda good: "loop", "Alist.txt: cannot be read (Too many levels of symbolic links)"),
    ("embeddings: binary garbage", "image_embeddings.npy", lambda good: GARBAGE, "image_embeddings.npy: not a readable .npy"),
    ("embeddings: truncated", "image_embeddings.npy", lambda good: good[:200], "image_embeddings.npy: not a readable .npy"),
    ("embeddings: wrong dtype", "image_embeddings.npy", lambda good: npy(np.zeros((90, 8), np.int64)), "dtype int64"),
    ("embeddings: wrong shape", "image_embeddings.npy", lambda good: npy(np.zeros((89, 8), np.float32)),
     "expected shape (90, e)"),
    ("embeddings: a folder", "image_embeddings.npy", lambda good: "dir", "image_embeddings.npy: not a readable .npy"),
    ("a FIFO", "traindata_new.txt", lambda good: "fifo", "traindata_new.txt: cannot be read (not a regular file but "
     "a FIFO)"),
    ("a symlink to /dev/zero", "Alist.txt", lambda good: "zero", "Alist.txt: cannot be read (not a regular file but a "
     "character device)"),
    ("embeddings: a FIFO", "image_embeddings.npy", lambda good: "fifo", "not a readable .npy array (not a regular "
     "file but a FIFO)"),
    ("embeddings: a symlink to /dev/zero", "image_embeddings.npy", lambda good: "zero", "not a regular file but a "
     "character device"),
    ("embeddings: 0 columns", "image_embeddings.npy", lambda good: npy(np.zeros((90, 0), np.float32)),
     "expected shape (90, e) with e >= 1, one row per item of Alist+Blist, and a float dtype; found shape (90, 0)"),
    ("embeddings: every row zero", "image_embeddings.npy", lambda good: npy(np.zeros((90, 8), np.float32)),
     "every row is zero, so no item has an image"),
    ("embeddings: float64 beyond float32", "image_embeddings.npy", lambda good: npy(np.full((90, 8), 1e300)),
     "row 0 (and 89 more) has a non-finite value or one beyond float32's range"),
    ("a time with two minus signs", "testdata_new.txt", lambda good: b"7\t7\t1|--1400663940|d|\t2|6|d|\n",
     "testdata_new.txt:1: expected an interaction 'item|unix_ts|date|'"),
    ("full-width digits as an item id", "traindata_new.txt", lambda good: "7\t7\t\uff11|5|d|\t2|6|d|\n".encode(),
     "traindata_new.txt:1: expected an interaction 'item|unix_ts|date|' with an integer time and an item id in 0..89"),
    ("full-width digits as a local index", "Alist.txt", lambda good: "0\tA0\t\uff10\n".encode(),
     "Alist.txt:1: expected 'raw_id<TAB>ASIN<TAB>local_index'"),
    ("two items sharing an ASIN", "Blist.txt", lambda good: b"200\tB1\t0\n201\tB1\t1\n",
     "Blist.txt:2: ASIN B1 appears twice (also Blist.txt:1)"),
    ("an ASIN in both item lists", "Blist.txt", lambda good: valid_line(good) + b"201\tDEMOA000003\t1\n",
     "Blist.txt:2: ASIN DEMOA000003 appears twice (also Alist.txt:4)"),
]


def npy(array, allow_pickle=False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


@pytest.mark.parametrize("case,name,content,message", TRAIN_DATA, ids=[c[0] for c in TRAIN_DATA])
def test_train_refuses_bad_scenario_files(case, name, content, message, tiny_dir, trained, tmp_path, capsys):
    scenario = tmp_path / "scenario"
    shutil.copytree(tiny_dir, scenario)
    put(scenario / name, content((tiny_dir / name).read_bytes()))
    code, text = call(train.main, ["--data-dir", scenario, "--models", "sasrec,ifcdsr", "--target", "X",
                                   "--epochs", 1, "--batch-size", 32, "--out", trained, "--resume"], capsys, trained)
    assert code == 2 and message in text and str(scenario / name) in text


def test_train_never_unpickles_code_from_an_embeddings_file(tiny_dir, trained, tmp_path, capsys):
    marker = tmp_path / "code-was-run"
    scenario = tmp_path / "scenario"
    shutil.copytree(tiny_dir, scenario)
    put(scenario / "image_embeddings.npy", npy(np.array([Exploit(marker)], dtype=object), allow_pickle=True))
    code, text = call(train.main, ["--data-dir", scenario, "--models", "ifcdsr", "--out", trained, "--resume"],
                      capsys, trained)
    assert code == 2 and "image_embeddings.npy: not a readable .npy array" in text and not marker.exists()


CHECKPOINTS = [  # (case, content of the file, expected message)
    ("a torch.save zip whose pickle runs os.system", "zip payload", "not an IFCDSR checkpoint (UnpicklingError"),
    ("a bare pickle that runs os.system", "pickle payload", "not an IFCDSR checkpoint (not the zip archive"),
    ("empty file", b"", "not an IFCDSR checkpoint"),
    ("binary garbage", GARBAGE, "not an IFCDSR checkpoint"),
    ("truncated checkpoint", "truncated", "not an IFCDSR checkpoint"),
    ("a state dict, not a checkpoint", "state dict", "not an IFCDSR checkpoint of this version (missing"),
    ("a FIFO", "fifo", "not a regular file but a FIFO; expected a best_*.pt or last_*.pt file"),
    ("a symlink to /dev/zero", "zero", "not a regular file but a character device"),
]


def write_checkpoint(path: Path, content, good: Path, marker: Path) -> None:
    if content == "zip payload":
        torch_file_with_pickle(path, Exploit(marker))
    elif content == "pickle payload":
        path.write_bytes(pickle.dumps(Exploit(marker), protocol=2))
    elif content == "truncated":
        path.write_bytes(good.read_bytes()[:3000])
    elif content == "state dict":
        torch.save({"E.weight": torch.zeros(3, 2)}, path)
    elif content in ("fifo", "zero"):
        put(path, content)
    else:
        path.write_bytes(content)


@pytest.mark.parametrize("case,content,message", CHECKPOINTS, ids=[c[0] for c in CHECKPOINTS])
def test_a_bad_checkpoint_is_refused_by_eval_only_and_by_resume_and_runs_nothing(case, content, message, tiny_dir,
                                                                               trained, tmp_path, capsys):
    marker = tmp_path / "code-was-run"
    good = trained / "sasrec" / "seed0" / "best_X.pt"
    write_checkpoint(tmp_path / "best_X.pt", content, good, marker)
    code, text = call(train.main, ["--data-dir", tiny_dir, "--eval-only", tmp_path / "best_X.pt"], capsys, trained)
    assert code == 2 and f"error: {tmp_path / 'best_X.pt'}: {message}" in text and not marker.exists()

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    write_checkpoint(run / "sasrec" / "seed0" / "last_X.pt", content, good, marker)
    code, text = call(train.main, ["--data-dir", tiny_dir, "--models", "sasrec", "--target", "X", "--epochs", 2,
                                   "--batch-size", 32, "--out", run, "--resume"], capsys, run)
    assert code == 2 and f"{run / 'sasrec' / 'seed0' / 'last_X.pt'}: {message}" in text and not marker.exists()


FIELDS = [  # (case, field, value, what --resume says if not the same as --eval-only): the fields are data, checked
    ("best_valid a string", "best_valid", "x", None),
    ("epoch negative", "epoch", -5, None),
    ("epoch NaN", "epoch", math.nan, None),
    ("epoch 10**18", "epoch", 10**18, None),
    ("history not a list", "history", "notalist", None),
    ("model_name popularity, which trains nothing", "model_name", "popularity",
     "was written by popularity with a different config (model)"),
    ("model_name an image row, config without images", "model_name", "ifcdsr",
     "was written by ifcdsr with a different config (model)"),
]


@pytest.mark.parametrize("case,field,value,resumed", FIELDS, ids=[c[0] for c in FIELDS])
def test_a_checkpoint_field_of_the_wrong_type_or_range_is_refused_naming_it(case, field, value, resumed, tiny_dir,
                                                                             trained, tmp_path, capsys):
    """--eval-only (where the field is in best_*.pt) and --resume: exit 2 naming the file and the field."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    for name in ("best_X.pt", "last_X.pt"):
        path = run / "sasrec" / "seed0" / name
        kept = path.read_bytes()
        state = torch.load(path, weights_only=True)
        if field in state:
            torch.save({**state, field: value}, path)
            argv = ["--eval-only", path] if name == "best_X.pt" else ["--models", "sasrec", "--target", "X",
                                                                      "--epochs", 2, "--batch-size", 32, "--out",
                                                                      run, "--resume"]
            code, text = call(train.main, ["--data-dir", tiny_dir, *argv], capsys)
            message = resumed if resumed and name == "last_X.pt" else f"not an IFCDSR checkpoint of this version " \
                                                                      f"({field} = "
            assert code == 2 and f"error: {path}: {message}" in text
        path.write_bytes(kept)


def test_a_checkpoint_holding_another_rows_weights_is_refused_before_it_is_evaluated(tiny_dir, trained, tmp_path,
                                                                                     capsys):
    """SASRec's weights under the name of GRU4Rec (their configs are alike): refused, and no metric printed."""
    path = tmp_path / "best_X.pt"
    torch.save({**torch.load(trained / "sasrec" / "seed0" / "best_X.pt", weights_only=True), "model_name": "gru4rec"},
               path)
    code, text = call(train.main, ["--data-dir", tiny_dir, "--eval-only", path], capsys)
    assert code == 2 and "MRR" not in text
    assert f"error: {path}: its weights do not fit the model its config builds" in text


def test_checkpoints_are_plain_data(trained):
    """Everything in a checkpoint loads with weights_only=True: tensors, numbers, strings, lists and dicts."""
    for path in trained.rglob("*.pt"):
        state = torch.load(path, weights_only=True)
        assert state.keys() >= train.CHECKPOINT.keys() and isinstance(state["config"], dict)


# ----------------------------------------------------------------------------- tools/amazon.py


@pytest.fixture
def shop(tmp_path):
    """A scenario of items A1..A3 | B1, B2 with metadata (no image URLs: nothing to download), and an images
    folder with one good image."""
    folder = tmp_path / "shop"
    folder.mkdir()
    (folder / "Alist.txt").write_text("".join(f"{i}\tA{i + 1}\t{i}\n" for i in range(3)))
    (folder / "Blist.txt").write_text("".join(f"{3 + i}\tB{i + 1}\t{i}\n" for i in range(2)))
    records = [repr({"asin": a, "title": f"item {a}"}) for a in ("A1", "A2", "A3", "B1", "B2")]
    write_lines(folder / "meta", records)
    (folder / "images").mkdir()
    (folder / "images" / "A1.png").write_bytes(png_header_only(4, 4))
    return folder


def good_meta(folder: Path) -> bytes:
    return (folder / "meta").read_bytes()


IMAGES = [  # (case, what to change, content, exit code, expected text)
    ("empty metadata file", "meta", lambda f: b"", 2, "none of the 5 ASINs"),
    ("binary garbage metadata", "meta", lambda f: GARBAGE, 2, "skipped"),
    ("truncated .gz metadata", "meta", lambda f: gzip.compress(good_meta(f))[:50], 2, "unreadable after line"),
    ("valid gzip of garbage metadata", "meta", lambda f: gzip.compress(GARBAGE), 2, "none of the 5 ASINs"),
    ("overlong line in metadata", "meta", lambda f: good_meta(f) + OVERLONG + b"\n", 0,
     "meta: skipped 1 malformed line(s) (first: line 6)"),
    ("invalid UTF-8 in metadata", "meta", lambda f: b"{'asin': 'A\xff1'}\n" + good_meta(f), 0,
     "meta: skipped 1 malformed line(s) (first: line 1)"),
    ("invalid UTF-8 in Alist.txt", "Alist.txt", lambda f: b"0\tA1\t0\n1\tA\xff2\t1\n", 2, "Alist.txt:2: not UTF-8"),
    ("a directory named like an image", "images/A2.jpg", lambda f: "dir", 0, "not a regular file: images/A2.jpg"),
    ("a symlink loop named like an image", "images/A3.jpg", lambda f: "loop", 0, "not a regular file: images/A3.jpg"),
    ("a zero-byte JPEG", "images/B1.jpg", lambda f: b"", 0, "no image URL"),
    ("a decompression-bomb PNG", "images/B2.png", lambda f: png_header_only(12_000, 12_000), 0, "no image URL"),
    ("a FIFO as the metadata file", "meta", lambda f: "fifo", 2, "meta: cannot be read (not a regular file but a "
     "FIFO)"),
    ("a symlink to /dev/zero as metadata", "meta", lambda f: "zero", 2, "not a regular file but a character device"),
    ("a FIFO named like an image", "images/A2.jpg", lambda f: "fifo", 0, "not a regular file: images/A2.jpg"),
    ("a symlink to /dev/zero named like an image", "images/A3.jpg", lambda f: "zero", 0,
     "not a regular file: images/A3.jpg"),
]


@pytest.mark.parametrize("case,name,content,code,message", IMAGES, ids=[c[0] for c in IMAGES])
def test_amazon_images_survives_bad_files(case, name, content, code, message, shop, capsys):
    put(shop / name, content(shop))
    protected = [shop / "images" / "A1.png"] + ([shop / "items.tsv"] if code == 2 else [])
    got, text = call(amazon.main, ["images", "--scenario-dir", shop, "--meta", shop / "meta"], capsys, *protected)
    reasons = (shop / "images" / "failures.tsv").read_text() if code == 0 else ""
    assert got == code and message in text + reasons
    if code == 2:
        assert f"{shop / name}" in text or f"{shop / 'meta'}" in text
    elif name.startswith("images/"):
        asin = name.split("/")[1].split(".")[0]
        assert f"\t{asin}\t{message}" in reasons and "\tA1\t" not in reasons
        assert (shop / name).is_symlink() or (shop / name).exists()  # an odd file is reported, never deleted


BUILD = [  # (case, content of the domain X review file from its good bytes, exit code, expected text)
    ("empty review file", lambda good: b"", 2, "found no such line among its first 0 lines"),
    ("binary garbage reviews", lambda good: GARBAGE, 2, "expected Amazon reviews"),
    ("truncated .gz reviews", lambda good: good[:len(good) // 2], 2, "unreadable after line"),
    ("valid gzip of garbage reviews", lambda good: gzip.compress(GARBAGE), 2, "expected Amazon reviews"),
    ("overlong line in reviews", lambda good: gzip.compress(gzip.decompress(good) + OVERLONG + b"\n"), 0,
     "skipped 2 malformed line(s)"),
    ("a timestamp that is not a number", lambda good: gzip.compress(
        gzip.decompress(good) + b'{"reviewerID": "c00", "asin": "X05", "unixReviewTime": "soon"}\n'), 0,
     "skipped 2 malformed line(s)"),
    ("invalid UTF-8 in reviews", lambda good: gzip.compress(gzip.decompress(good) + b"\xff\xfe{\n"), 0,
     "skipped 2 malformed line(s)"),
    *[(f"a review time of {t}", lambda good, t=t: gzip.compress(gzip.decompress(good) + b'{"reviewerID": "c00", '
       b'"asin": "X05", "unixReviewTime": ' + t.encode() + b'}\n'), 0, "skipped 2 malformed line(s)")
      for t in ("Infinity", "-Infinity", "NaN", "1e400", '"' + "\uff11\uff14" + "\uff10" * 8 + '"')],
    ("a FIFO as the review file", lambda good: "fifo", 2, "cannot be read (not a regular file but a FIFO)"),
]


@pytest.mark.parametrize("case,content,code,message", BUILD, ids=[c[0] for c in BUILD])
def test_amazon_build_survives_bad_review_files(case, content, code, message, tmp_path, capsys):
    """The example's domain X file already holds one malformed line; the bad cases add one more."""
    ra, rb, ma, mb = write_example(tmp_path / "raw", "2018 json")
    put(ra, content(ra.read_bytes()))
    built = tmp_path / "built"
    built.mkdir()
    (built / "Alist.txt").write_text("an earlier scenario\n")
    argv = ["build", "--reviews-a", ra, "--reviews-b", rb, "--meta-a", ma, "--meta-b", mb]
    got, text = call(amazon.main, argv + ["--out", tmp_path / "new"], capsys, built)
    assert got == code and message in text and str(ra) in text
    assert (tmp_path / "new").is_dir() == (code == 0) and not list(tmp_path.glob(".new*"))
    got, text = call(amazon.main, argv + ["--out", built], capsys, built)  # never over an existing scenario
    assert got == 2 and "already exists" in text


# ----------------------------------------------------------------------------- tools/embed.py


EMBED = [  # (case, file under the scenario, content, exit code, expected text)
    ("empty Alist.txt", "Alist.txt", b"", 2, "Alist.txt: the file is empty"),
    ("binary garbage Blist.txt", "Blist.txt", GARBAGE, 2, "Blist.txt:2: not UTF-8"),
    ("items.tsv with invalid UTF-8", "items.tsv", b"global_id\tdomain\tasin\ttitle\timage_url\n0\tX\tA\xff\n", 2,
     "items.tsv:2: not UTF-8"),
    ("weights: binary garbage", "weights.pt", GARBAGE, 2, "weights.pt is neither"),
    ("weights: empty", "weights.pt", b"", 2, "weights.pt is neither"),
    ("a directory named like an image", "images/A000.jpg", "dir", 0, "no image file 2"),
    ("a symlink loop named like an image", "images/A000.jpg", "loop", 0, "no image file 2"),
    ("a zero-byte JPEG", "images/A000.jpg", b"", 0, "unreadable image 3"),
    ("a decompression-bomb PNG", "images/A000.jpg", png_header_only(12_000, 12_000), 0, "unreadable image 3"),
    ("a partial chunk that is garbage", "image_embeddings.partial/chunk_000000.npz", GARBAGE, 2,
     "chunk_000000.npz: unreadable"),
    ("weights: a FIFO", "weights.pt", "fifo", 2, "weights.pt': not a regular file but a FIFO"),
    ("weights: a symlink to /dev/zero", "weights.pt", "zero", 2, "not a regular file but a character device"),
    ("a FIFO named like an image", "images/A000.jpg", "fifo", 0, "no image file 2"),
    ("a symlink to /dev/zero named like an image", "images/A000.jpg", "zero", 0, "no image file 2"),
    ("an image too long to resize", "images/A000.jpg", png_header_only(100_000, 1), 0, "unreadable image 3"),
    ("a partial chunk that is a FIFO", "image_embeddings.partial/chunk_000000.npz", "fifo", 2,
     "chunk_000000.npz: unreadable (not a regular file but a FIFO)"),
    ("a partial meta.json that is a FIFO", "image_embeddings.partial/meta.json", "fifo", 2,
     "meta.json: unreadable (not a regular file but a FIFO)"),
]


@pytest.mark.parametrize("case,name,content,code,message", EMBED, ids=[c[0] for c in EMBED])
def test_embed_survives_bad_files(case, name, content, code, message, tmp_path, capsys):
    """make_scenario's 8 items: 5 good images (A000's replaced here by the odd file), B001 corrupt, B002
    truncated, B003 without an image. An earlier image_embeddings.npy and an interrupted run's partial folder
    (with the same weights and items) must survive a refused run byte for byte."""
    weights = make_scenario(tmp_path)
    np.save(tmp_path / "image_embeddings.npy", np.ones((8, 32), np.float32))
    (tmp_path / "items.tsv").write_text("global_id\tdomain\tasin\ttitle\timage_url\n")
    partial = tmp_path / "image_embeddings.partial"
    if code == 2:  # an interrupted run of the same weights and items, with one finished chunk
        partial.mkdir()
        meta = {"weights_sha256": clip_loader.file_sha256(weights), "items": 8, "chunk_size": 4096,
                "asins_sha256": hashlib.sha256("\n".join(read_items(tmp_path).asins).encode()).hexdigest()}
        (partial / "meta.json").write_text(json.dumps(meta))
        (partial / "chunk_000000.npz").write_bytes(b"an earlier run's chunk")
    put(tmp_path / name, content)
    protected = [tmp_path / "image_embeddings.npy", partial] if code == 2 else [tmp_path / "images" / "A001.jpeg"]
    got, text = call(embed.main, ["--scenario-dir", tmp_path, "--images", tmp_path / "images",
                                  "--weights", weights, "--device", "cpu", "--workers", 0,
                                  "--missing", "text" if name == "items.tsv" else "zero"], capsys, *protected)
    assert got == code and message in text
    if code == 2:
        assert str(tmp_path / name) in text
    else:
        rows = (tmp_path / "image_embeddings.missing.tsv").read_text()
        assert "0\tA000\t" in rows
        if "bomb" in case:
            assert "decompression bomb" in rows
        if "resize" in case:
            assert "100000 x 1 pixels, 102,400,000 once resized to a shorter side of 32: more than" in rows


# ----------------------------------------------------------------------------- killed at any moment

ROOT = Path(__file__).resolve().parent.parent  # the project
KILLER = """
import io, os, signal, sys
import data, torch
point, n, command = sys.argv[1], int(sys.argv[2]), sys.argv[3]
calls = 0


def tick():
    global calls
    calls += 1
    return calls == n


def half_then_kill(write_atomically):
    def write(path, *args):  # the n-th file write stops half-way, as a kill during a write would leave its temp file
        if tick():
            buffer = io.BytesIO()
            if args and callable(args[0]):
                args[0](buffer)
            else:
                buffer.write(args[0].encode())
            path.with_name(f".{path.name}.killed.tmp").write_bytes(buffer.getvalue()[:len(buffer.getvalue()) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        return write_atomically(path, *args)
    return write


if command == "train":
    import train
    if point == "step":  # right after the n-th optimiser step
        step = torch.optim.Adam.step
        def counted(self, *a, **k):
            out = step(self, *a, **k)
            if tick():
                os.kill(os.getpid(), signal.SIGKILL)
            return out
        torch.optim.Adam.step = counted
    elif point == "checkpoint":
        train.atomic_write = half_then_kill(data.atomic_write)
    elif point == "term":  # SIGTERM, handled as train.py's __main__ does, while test_ranks.npz is written
        signal.signal(signal.SIGTERM, train.stop)
        train.np.savez = lambda *a, **k: os.kill(os.getpid(), signal.SIGTERM)
    elif point == "results":  # half-way through the final write of results.json and test_ranks.npz
        def write_all(writes):
            if tick():
                for path, write in writes.items():
                    buffer = io.BytesIO()
                    write(buffer)
                    path.with_name(f".{path.name}.killed.tmp").write_bytes(buffer.getvalue()[:len(buffer.getvalue()) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
            return data.atomic_write_all(writes)
        train.atomic_write_all = write_all
    sys.exit(train.main(sys.argv[4:]))
else:
    import clip_loader
    from tools import embed
    if point == "image":  # right after the n-th image is encoded
        encode = clip_loader.CLIP.encode_image
        def counted(self, image):
            out = encode(self, image)
            if tick():
                os.kill(os.getpid(), signal.SIGKILL)
            return out
        clip_loader.CLIP.encode_image = counted
    else:  # "write": half-way through the n-th file write
        embed.atomic_write = half_then_kill(data.atomic_write)
    folder = sys.argv[4]
    embed.embed(folder, folder + "/images", weights=folder + "/weights.pt", device="cpu", workers=0,
                chunk_size=3, batch_size=1)
"""


def start_killed(point: str, n: int, command: str, *argv) -> subprocess.Popen:
    """Starts the command in a new process that SIGKILLs itself at the n-th `point` (or is stopped otherwise);
    `killed` waits for it. Started early, such processes run beside each other and the tests."""
    return subprocess.Popen([sys.executable, "-c", KILLER, point, str(n), command, *map(str, argv)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def killed(process: subprocess.Popen, code: int = -signal.SIGKILL) -> str:
    """A started process's stderr, once it has ended with exit code `code`."""
    _, err = process.communicate(timeout=600)
    assert process.returncode == code, (process.args[3:5], process.returncode, err[-2000:])
    return err


@contextlib.contextmanager
def started(processes: dict):
    """The processes of a fixture, killed at its end if a failing test left any running."""
    try:
        yield processes
    finally:
        for process in processes.values():
            process.kill()
            process.communicate()


def comparable(res: dict) -> dict:
    """results.json without what differs between two correct runs: timings and the output folder's path."""
    runs = {m: [{**{k: v for k, v in r.items() if k not in ("history", "checkpoint")},
                 "history": {d: [{k: v for k, v in h.items() if k != "seq_per_s"} for h in hs]
                             for d, hs in r.get("history", {}).items()}} for r in rs]
            for m, rs in res["runs"].items()}
    return {"runs": runs, "summary": res["summary"], "significance": res["significance"]}


TRAIN_RUN = ("--no-image", "--target", "X", "--epochs", 3, "--batch-size", 16)  # 4 steps an epoch
TRAIN_KILLS = [("step", 6), ("checkpoint", 3), ("results", 1)]
EMBED_KILLS = [("image", 5), ("write", 3), ("write", 5)]


@pytest.fixture(scope="module")
def train_kills(tiny_dir, tmp_path_factory):
    """{(point, n): (run folder, process)}: the trainings of TRAIN_RUN killed at each of TRAIN_KILLS, all started
    at once."""
    runs = {kill: tmp_path_factory.mktemp("killed") / "run" for kill in TRAIN_KILLS}
    with started({kill: start_killed(*kill, "train", *TRAIN_RUN, "--data-dir", tiny_dir, "--out", out)
                  for kill, out in runs.items()}) as processes:
        yield {kill: (runs[kill], processes[kill]) for kill in TRAIN_KILLS}


@pytest.fixture(scope="module")
def straight(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    assert run_cli(*TRAIN_RUN, "--data-dir", tiny_dir, "--out", out) == 0
    return json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("point,n", TRAIN_KILLS)
def test_training_killed_at_any_moment_resumes_to_the_same_results(point, n, train_kills, tiny_dir, straight):
    """SIGKILL after the 6th optimiser step (mid-epoch 2), half-way through writing the 3rd checkpoint, and
    half-way through the final write of results.json and test_ranks.npz; the same command with --resume then
    ends with the results of the uninterrupted run."""
    out, process = train_kills[point, n]
    killed(process)
    assert run_cli(*TRAIN_RUN, "--data-dir", tiny_dir, "--out", out, "--resume") == 0
    assert comparable(json.loads((out / "results.json").read_text())) == comparable(straight)


@pytest.fixture(scope="module")
def embed_kills(tmp_path_factory):
    """{(point, n): (scenario folder, process)}: embed killed at each of EMBED_KILLS, all started at once."""
    folders = {kill: tmp_path_factory.mktemp("killed") for kill in EMBED_KILLS}
    for folder in folders.values():
        make_scenario(folder)
    with started({kill: start_killed(*kill, "embed", folder) for kill, folder in folders.items()}) as processes:
        yield {kill: (folders[kill], processes[kill]) for kill in EMBED_KILLS}


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """The files of an uninterrupted embed of make_scenario's 8 items."""
    once = tmp_path_factory.mktemp("once")
    make_scenario(once)
    embed.embed(once, once / "images", weights=once / "weights.pt", device="cpu", workers=0, chunk_size=3,
                batch_size=1)
    return {name: (once / name).read_bytes() for name in ("image_embeddings.npy", "image_embeddings.missing.tsv")}


@pytest.mark.parametrize("point,n", EMBED_KILLS)
def test_embed_killed_at_any_moment_ends_with_the_same_files_when_run_again(point, n, embed_kills, embedded):
    """Chunks of 3 items; SIGKILL after the 5th image, half-way through writing a chunk (the 3rd file write:
    meta.json, chunk 0, chunk 1) or the final image_embeddings.npy (the 5th); running it again gives the files
    of an uninterrupted run."""
    folder, process = embed_kills[point, n]
    killed(process)
    embed.embed(folder, folder / "images", weights=folder / "weights.pt", device="cpu", workers=0,
                chunk_size=3, batch_size=1)
    assert {name: (folder / name).read_bytes() for name in embedded} == embedded
    assert not (folder / "image_embeddings.partial").exists()


# ----------------------------------------------------------------------------- wrong values never look like results

HUGE = "1" + "0" * 30  # an integer literal, and 1e30 as a number
NUMBERS = ("-1", "nan", "inf", "-inf", HUGE)  # out of range for every numeric flag; "0" too where listed
FLAGS = [  # (command, flag, bad values besides NUMBERS)
    *[("train", flag, zero) for flag, zero in (
        ("--lr", ("0",)), ("--weight-decay", ()), ("--temperature", ("0",)), ("--alpha", ()), ("--lambda1", ()),
        ("--lambda2", ()), ("--batch-size", ("0", "1.5")), ("--epochs", ("0",)), ("--patience", ("0",)),
        ("--eval-every", ("0",)), ("--seed", ("4294967296",)))],
    ("train", "--seeds", ("0", "1001", "1,1", "0,-3", "4294967296,1")),
    *[("benchmark", flag, zero) for flag, zero in (
        ("--items", ("0", "99")), ("--seqs", ("0", "39")), ("--batch-size", ("0",)), ("--images", ()),
        ("--repeats", ("0",)), ("--workers", ()))],
    ("images", "--workers", ("0",)), ("images", "--timeout", ("0",)),
    *[("build", flag, zero) for flag, zero in (
        ("--min-count", ("0",)), ("--min-per-domain", ("0",)), ("--max-len", ("0", "1")), ("--held-out", ("0", "1")),
        ("--seed", ("4294967296",)))],
    ("embed", "--batch-size", ("0",)), ("embed", "--workers", ()),
]


@pytest.mark.parametrize("command,flag,extra", FLAGS, ids=[f"{c} {f}" for c, f, _ in FLAGS])
def test_every_numeric_flag_refuses_non_finite_and_out_of_range_values(command, flag, extra, tiny_dir, shop,
                                                                        tmp_path, capsys):
    """0 (where it is out of range), negative, NaN, ±inf and huge values: exit code 2 before any work, a message
    that names the flag and its accepted range, and nothing written."""
    from tools import benchmark
    out = tmp_path / "out"
    base = {"train": (train.main, ["--data-dir", tiny_dir, "--out", out]),
            "benchmark": (benchmark.main, ["--device", "cpu"]),
            "images": (amazon.main, ["images", "--scenario-dir", shop, "--meta", shop / "meta"]),
            "build": (amazon.main, ["build", "--reviews-a", shop / "meta", "--reviews-b", shop / "meta", "--meta-a",
                                    shop / "meta", "--meta-b", shop / "meta", "--out", out]),
            "embed": (embed.main, ["--scenario-dir", shop, "--images", shop / "images"])}[command]
    for value in NUMBERS + extra:
        code, text = call(base[0], base[1] + [f"{flag}={value}"], capsys, tiny_dir, shop)
        assert code == 2 and flag in text and ("expected a" in text or "expected an" in text), (value, text)
        assert not out.exists()


@pytest.mark.parametrize("device", ["meta", "mps", "gpu", "cuda:x", "cuda:7"])
def test_embed_refuses_a_device_it_cannot_use(device, tmp_path, capsys):
    weights = make_scenario(tmp_path)
    code, text = call(embed.main, ["--scenario-dir", tmp_path, "--images", tmp_path / "images",
                                   "--weights", weights, "--device", device, "--workers", 0], capsys, tmp_path)
    assert code == 2 and "--device" in text and device in text


def test_benchmark_refuses_fewer_sequences_than_its_timed_steps(capsys):
    from tools import benchmark
    code, text = call(benchmark.main, ["--items", 1000, "--seqs", 200, "--batch-size", 100, "--device", "cpu"], capsys)
    assert code == 2 and "--seqs 200: the 3 timed steps need at least 3 batches of --batch-size 100" in text


def test_literal_and_a_reading_flag_together_are_refused(tiny_dir, tmp_path, capsys):
    code, text = call(train.main, ["--data-dir", tiny_dir, "--literal", "--temperature", "0.1", "--out",
                                   tmp_path / "o"], capsys)
    assert code == 2 and "--temperature 0.1 and --literal (temperature=1.0, as printed) disagree" in text
    assert not (tmp_path / "o").exists()


def test_heads_that_do_not_divide_the_image_width_are_refused(tiny_dir, tmp_path, capsys):
    code, text = call(train.main, ["--data-dir", tiny_dir, "--models", "ifcdsr", "--set", "n_heads=3", "q=48",
                                   "--out", tmp_path / "o"], capsys)
    assert code == 2 and "n_heads = 3: expected a divisor of the image width e = 8 too" in text


def test_a_nan_loss_stops_training_with_exit_2_and_keeps_the_last_good_checkpoint(tiny_dir, tmp_path, capsys,
                                                                                  monkeypatch):
    """Image vectors scaled by 1e20 overflow the attention's LayerNorm: the loss is NaN at the first batch.
    Then a model whose loss turns NaN in epoch 2: the checkpoint of epoch 1 stays, no results are written."""
    scenario = tmp_path / "scenario"
    shutil.copytree(tiny_dir, scenario)
    E = np.load(scenario / "image_embeddings.npy")
    np.save(scenario / "image_embeddings.npy", E * np.float32(1e20))
    out = tmp_path / "huge"
    code, text = call(train.main, ["--data-dir", scenario, "--models", "ifcdsr", "--target", "X", "--epochs", 2,
                                   "--batch-size", 32, "--out", out], capsys)
    assert code == 2 and "error: the loss became nan in epoch 1 of ifcdsr (target X, seed 0)" in text
    assert "Lower --lr (now 0.0005), or check that the image embeddings" in text and "no checkpoint was kept" in text
    assert not (out / "results.json").exists()

    loss = train.IFCDSR.loss
    steps = []

    def diverging(self, inputs, targets, shape=None):
        total, parts = loss(self, inputs, targets, shape)
        steps.append(1)
        return (total * math.nan, {v: math.nan for v in parts}) if len(steps) > 3 else (total, parts)

    monkeypatch.setattr(train.IFCDSR, "loss", diverging)
    out = tmp_path / "later"
    code, text = call(train.main, ["--data-dir", tiny_dir, "--models", "ifcdsr", "--target", "X", "--epochs", 3,
                                   "--batch-size", 32, "--seed", 3, "--out", out], capsys)
    last = out / "ifcdsr" / "seed3" / "last_X.pt"
    assert code == 2 and "the loss became nan in epoch 2 of ifcdsr (target X, seed 3)" in text
    assert f"the last good checkpoint, {last}, is kept" in text
    assert torch.load(last, weights_only=True)["epoch"] == 1 and not (out / "results.json").exists()


def test_a_checkpoint_with_nan_weights_gives_no_metric(trained, tiny_dir, tmp_path, capsys):
    state = torch.load(trained / "sasrec" / "seed0" / "best_X.pt", weights_only=True)
    state["model"]["E.weight"][0, 0] = math.nan
    torch.save(state, tmp_path / "best_X.pt")
    code, text = call(train.main, ["--data-dir", tiny_dir, "--eval-only", tmp_path / "best_X.pt"], capsys, trained)
    assert code == 2 and "sasrec (target X, seed 0) gave NaN scores among cases" in text and "MRR" not in text


def test_results_are_strict_json(trained):
    def refuse(token):
        raise AssertionError(f"{token} in results.json")

    json.loads((trained / "results.json").read_text(), parse_constant=refuse)


def test_a_refused_resume_leaves_the_run_folder_as_it_was(trained, tiny_dir, tmp_path, capsys):
    """A finished run resumed with another learning rate (popularity, which needs no checkpoint, comes first
    in the tables): refused before any file is written, the folder byte for byte as it was."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    code, text = call(train.main, ["--data-dir", tiny_dir, "--models", "popularity,sasrec", "--target", "X",
                                   "--epochs", 1, "--batch-size", 32, "--lr", 0.01, "--out", run, "--resume"],
                      capsys, run)
    assert code == 2 and "with a different config (lr)" in text


def test_a_checkpoint_of_other_data_of_the_same_size_is_refused(trained, tmp_path, capsys):
    """Another demo of the same sizes (40 + 50 items) from another seed: --eval-only and --resume refuse the
    checkpoints, naming the data they belong to."""
    from conftest import TINY
    other = make_demo(tmp_path / "other", seed=1, **TINY)
    code, text = call(train.main, ["--data-dir", other, "--eval-only", trained / "sasrec" / "seed0" / "best_X.pt"],
                      capsys, trained)
    assert code == 2 and "trained on other data: scenario 'tiny'" in text and "(40+50 items)" in text
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    resume = ["--data-dir", other, "--models", "sasrec", "--target", "X", "--epochs", 1, "--batch-size", 32, "--out",
              run, "--resume"]
    code, text = call(train.main, resume, capsys, run)
    assert code == 2 and f"{run / 'results.json'}: a run trained on other data: scenario 'tiny'" in text
    (run / "results.json").unlink()  # as if interrupted before the first results: the checkpoints say it
    code, text = call(train.main, resume, capsys, run)
    assert code == 2 and "_X.pt: trained on other data: scenario 'tiny'" in text and "--data-dir" in text


def test_resume_without_out_takes_a_run_of_exactly_this_scenario(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("Food-20260101-000000", "Food-Kitchen-20270101-000000", "Food-old"):
        (tmp_path / "runs" / name).mkdir(parents=True)
    assert train.output_folder(None, "Food", resume=True) == Path("runs/Food-20260101-000000")
    with pytest.raises(train.UsageError, match="no earlier run of Kitchen"):
        train.output_folder(None, "Kitchen", resume=True)


LOPSIDED = [  # (case, lines of the valid file, item lists (|X|, |Y|), expected message)
    ("no validation case in the target domain", [line(7, (0, 1), (3, 2))], (3, 4),
     "validdata_new.txt: no sequence ends in an item of domain X"),
    ("a domain with one item", None, (1, 4), "Alist.txt: domain X has 1 item; a scenario needs at least 2"),
]


@pytest.mark.parametrize("case,valid,sizes,message", LOPSIDED, ids=[c[0] for c in LOPSIDED])
def test_small_and_lopsided_scenarios_are_clear_errors(case, valid, sizes, message, tmp_path, capsys):
    from conftest import write_scenario
    lines = [line(1, (0, 1), (sizes[0], 2), (0, 3)), line(2, (sizes[0] + 1, 1), (0, 2))]
    folder = write_scenario(tmp_path / "s", lines, valid, num_x=sizes[0], num_y=sizes[1])
    code, text = call(train.main, ["--data-dir", folder, "--models", "sasrec", "--target", "X", "--out",
                                   tmp_path / "o"], capsys, folder)
    assert code == 2 and message in text and not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- a finished run is never damaged

FINISHED = ("--target", "X", "--epochs", 1, "--batch-size", 32, "--device", "cpu")  # popularity and IFCDSR


@pytest.fixture(scope="module")
def finished(tiny_dir, tmp_path_factory):
    """A finished default run (popularity and IFCDSR, target X) on the tiny scenario."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert run_cli(*FINISHED, "--data-dir", tiny_dir, "--out", out) == 0
    return out


def full_disk(run: Path, monkeypatch) -> None:
    """The disk fills up while test_ranks.npz is written, after results.json's temp file."""
    def savez(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(train.np, "savez", savez)


RESUMES = [  # (case, what happens to the copy of the finished run, expected message)
    ("best checkpoint deleted", lambda run, mp: (run / "ifcdsr" / "seed0" / "best_X.pt").unlink(),
     "best_X.pt: missing, though "),
    ("best checkpoint a FIFO", lambda run, mp: put(run / "ifcdsr" / "seed0" / "best_X.pt", "fifo"),
     "best_X.pt: not a regular file but a FIFO"),
    ("last checkpoint a symlink to /dev/zero", lambda run, mp: put(run / "ifcdsr" / "seed0" / "last_X.pt", "zero"),
     "last_X.pt: not a regular file but a character device"),
    ("a full disk at the final write", full_disk, "error: [Errno 28] No space left on device"),
    ("the lock file a FIFO", lambda run, mp: put(run / train.LOCK, "fifo"), ".lock: not a regular file but a FIFO, "
     "not the run's lock file; delete it and run again."),
    ("the lock file a symlink", lambda run, mp: put(run / train.LOCK, "zero"), ".lock: a symlink, not the run's lock"),
    ("last checkpoint deleted", lambda run, mp: (run / "ifcdsr" / "seed0" / "last_X.pt").unlink(),
     "last_X.pt: missing from this finished run, though "),
]


@pytest.mark.parametrize("case,change,message", RESUMES, ids=[c[0] for c in RESUMES])
def test_a_refused_or_failed_resume_leaves_every_byte_of_a_finished_run(case, change, message, finished, tiny_dir,
                                                                         tmp_path, capsys, monkeypatch):
    """The same command plus --resume: refused before anything is restored or written, or failing at the
    final write; every file of the run folder (results.json and test_ranks.npz included) stays as it was."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    change(run, monkeypatch)
    code, text = call(train.main, [*FINISHED, "--data-dir", tiny_dir, "--out", run, "--resume"], capsys, run)
    assert code == 2 and message in text
    if "missing" in message:
        assert f"Put it back, or delete {run / 'ifcdsr' / 'seed0'} to train this model again." in text


@pytest.mark.parametrize("fewer, message", [
    (("--models", "ifcdsr"), "holds popularity target X, which this command would drop"),
    (("--models", "ifcdsr_id"), "holds ifcdsr seed 0 target X, popularity target X, which this command would"),
    (("--target", "Y"), "holds ifcdsr seed 0 target X, popularity target X, which this command would drop"),
    (("--seed", 1), "holds ifcdsr seed 0 target X, which this command would drop"),
])
def test_a_resume_naming_fewer_rows_seeds_or_targets_is_refused(fewer, message, finished, tiny_dir, tmp_path, capsys):
    """--resume writes results.json anew from what it runs: one that names fewer rows, seeds or target domains
    than the finished run holds is refused, and the run stays as it was."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    given = FINISHED[2:] if fewer[0] == "--target" else FINISHED  # the run's own flags, but for those that are fewer
    code, text = call(train.main, [*given, *fewer, "--data-dir", tiny_dir, "--out", run, "--resume"], capsys, run)
    assert code == 2 and message in text and "Traceback" not in text


@pytest.mark.parametrize("content", ["fifo", "symlink"])
def test_a_stale_temp_file_is_never_opened_nor_followed(content, finished, tiny_dir, tmp_path, capsys):
    """A FIFO, or a symlink to a file outside the run, at `<file>.tmp` beside results.json and a checkpoint: a
    --resume that trains one more epoch neither hangs on it nor writes through it."""
    run, precious = tmp_path / "run", tmp_path / "precious.txt"
    shutil.copytree(finished, run)
    precious.write_text("precious")
    for tmp in (run / "results.json.tmp", run / "ifcdsr" / "seed0" / "last_X.pt.tmp"):
        os.mkfifo(tmp) if content == "fifo" else tmp.symlink_to(os.path.relpath(precious, tmp.parent))
    argv = [*FINISHED[:2], "--epochs", 2, *FINISHED[4:], "--data-dir", tiny_dir, "--out", run, "--resume"]
    code, text = call(train.main, argv, capsys, precious)
    assert code == 0 and precious.read_text() == "precious" and (run / "results.json.tmp").exists()


def small_files():
    """A child process that may write files of at most 4 kB (ulimit -f): a longer write fails instead of killing."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))


@pytest.fixture(scope="module")
def interrupted(finished, tiny_dir, tmp_path_factory):
    """{case: (copy of the finished run, its snapshot, process)}: two resumes of the finished run, started at once;
    "term": SIGTERM while test_ranks.npz is written; "full disk": one more epoch under `small_files`."""
    runs = {case: tmp_path_factory.mktemp("interrupted") / "run" for case in ("term", "full disk")}
    for run in runs.values():
        shutil.copytree(finished, run)
    before = {case: snapshot(run) for case, run in runs.items()}
    more = [*FINISHED[:2], "--epochs", 2, *FINISHED[4:], "--data-dir", tiny_dir, "--out", runs["full disk"], "--resume"]
    with started({"term": start_killed("term", 0, "train", *FINISHED, "--data-dir", tiny_dir, "--out", runs["term"],
                                       "--resume"),
                  "full disk": subprocess.Popen([sys.executable, ROOT / "train.py", *map(str, more)], cwd=ROOT,
                                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                                preexec_fn=small_files)}) as processes:
        yield {case: (run, before[case], processes[case]) for case, run in runs.items()}


def test_a_resume_interrupted_by_sigterm_leaves_every_byte_of_a_finished_run(interrupted):
    run, before, process = interrupted["term"]
    err = killed(process, code=130)
    assert "interrupted" in err and "Traceback" not in err and snapshot(run) == before


def test_a_full_disk_while_a_checkpoint_is_written_is_a_message_and_leaves_the_run(interrupted):
    """A resume that trains one more epoch where files may hold at most 4 kB: torch's zip writer fails on the
    checkpoint; exit code 2 and a message, every file as it was."""
    run, before, process = interrupted["full disk"]
    err = killed(process, code=2)
    assert "Traceback" not in err
    assert "_X.pt: could not be written (" in err and "is the disk full?" in err
    assert snapshot(run) == before


HOLDER = "import fcntl, os, sys\nlocks = [open(p, 'a+') for p in sys.argv[1:]]\nfor f in locks:\n" \
         "    fcntl.lockf(f, fcntl.LOCK_EX)\n    f.truncate(0)\n    f.write(f'{os.getpid()}\\n')\n    f.flush()\n" \
         "print('locked', flush=True)\nsys.stdin.read()"  # as train.py holds a run folder's lock


def test_one_process_per_run_folder_and_a_dead_holder_does_not_block(finished, tiny_dir, tmp_path, capsys):
    """Another process holds the lock of a finished run and of an empty new folder: a --resume into the one
    and a new run into the other are refused at once, naming the holder; once it is dead, its lock file
    blocks nothing."""
    run, new = tmp_path / "run", tmp_path / "new"
    shutil.copytree(finished, run)
    new.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, run / train.LOCK, new / train.LOCK],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        for out, extra in ((run, ["--resume"]), (new, ["--seed", 1])):
            code, text = call(train.main, [*FINISHED, "--data-dir", tiny_dir, "--out", out, *extra], capsys, run, new)
            assert code == 2 and f"{out}: another train.py (process {holder.pid}) is writing this run folder" in text
    finally:
        holder.kill()
        holder.wait()
    code, text = call(train.main, [*FINISHED, "--data-dir", tiny_dir, "--out", run, "--resume"], capsys)
    assert code == 0 and not list(run.glob("*.tmp"))


def test_results_refuse_a_nan_and_write_nothing(tmp_path):
    """results.json is strict JSON: a NaN among the numbers is an error, and neither file is written."""
    with pytest.raises(ValueError, match="not JSON compliant"):
        train.save_run(tmp_path, {"summary": {"MRR": math.nan}}, {})
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- every flag acts or is refused

CKPT = "run/sasrec/seed0/best_X.pt"  # refused before it is read
FLAG_PAIRS = [  # (command, flags, expected message): refused before any work, naming both flags
    ("train", ("--scenario", "demo", "--data-dir", "{tiny}"), "--scenario and --data-dir cannot both act"),
    ("train", ("--grid", "--lr", "0.01"), "--lr 0.01 and --grid lr=0.001,0.0005,0.0001 disagree on lr"),
    ("train", ("--grid", "--weight-decay", "0"), "--weight-decay 0 and --grid weight_decay=0.0001,5e-05,1e-05 "
     "disagree"),
    ("train", ("--ablation", "--no-image"), "--models ablation and --no-image cannot both act"),
    ("train", ("--ablation", "--no-multi-attention"), "--models ablation and --no-multi-attention cannot both act"),
    ("train", ("--compare", "--no-multi-attention"), "--models compare and --no-multi-attention cannot both act"),
    ("train", ("--models", "ifcdsr", "--no-multi-attention"), "--models ifcdsr and --no-multi-attention cannot "
     "both act"),
    ("train", ("--models", ""), "--models '': names no model; expected a comma-separated list"),
    ("train", ("--models", " , "), "--models ' , ': names no model"),
    ("train", ("--no-image", "--alpha", "0.5"), "--alpha: acts on none of the rows of --no-image (popularity, "
     "ifcdsr_id)"),
    ("train", ("--no-multi-attention", "--lambda1", "1", "--lambda2", "1"), "--lambda1, --lambda2: act on none of "
     "the rows of --no-multi-attention (popularity, image_fusion)"),
    ("train", ("--models", "sasrec", "--temperature", "0.5"), "--temperature: acts on none of the rows of --models "
     "(sasrec)"),
    ("train", ("--models", "gru4rec", "--literal"), "--literal: acts on none of the rows of --models (gru4rec)"),
    ("train", ("--models", "popularity", "--epochs", "2"), "--epochs: acts on none of the rows of --models "
     "(popularity)"),
    ("train", ("--models", "popularity", "--seeds", "3"), "--seeds: acts on none of the rows"),
    ("train", ("--eval-only", CKPT, "--resume"), "--eval-only evaluates the checkpoint as it was trained (its model, "
     "target, config and folder) and writes nothing but --export's file; drop --resume"),
    ("train", ("--eval-only", CKPT, "--target", "X", "--models", "sasrec", "--epochs", "3"),
     "drop --target, --models, --epochs"),
    ("train", ("--eval-only", CKPT, "--lr", "0.1", "--no-image", "--seeds", "2"), "drop --seeds, --no-image, --lr"),
    ("train", ("--eval-only", CKPT, "--out", "elsewhere"), "drop --out"),
    ("train", ("--out", "{dangling}"), "a symlink to nowhere, which does not exist; choose another --out"),
    ("walkthrough", ("--no-image", "--alpha", "0"), "--alpha weighs the image branch of Eq. 5, which --no-image "
     "removes"),
    ("embed", ("--offline", "--weights", "{tiny}/weights.pt"), "--offline forbids downloading the weights of a "
     "model name, but --weights"),
]


@pytest.mark.parametrize("command,flags,message", FLAG_PAIRS, ids=[" ".join(c[1]) for c in FLAG_PAIRS])
def test_flags_that_cannot_both_act_are_refused_before_any_work(command, flags, message, tiny_dir, tmp_path,
                                                                 capsys, monkeypatch):
    import walkthrough
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dangling").symlink_to("nowhere")
    argv = [f.format(tiny=tiny_dir, dangling=tmp_path / "dangling") for f in flags]
    if command == "train" and not {"--out", "--eval-only"} & set(flags):
        argv += ([] if "--scenario" in flags else ["--data-dir", tiny_dir]) + ["--out", tmp_path / "o"]
    if command == "embed":
        argv = ["--scenario-dir", tiny_dir, "--images", tiny_dir, *argv]
    main = {"train": train.main, "walkthrough": walkthrough.main, "embed": embed.main}[command]
    code, text = call(main, argv, capsys, tiny_dir)
    assert code == 2 and message in text, text
    assert not (tmp_path / "o").exists() and not (tmp_path / "runs").exists()


def test_held_out_sequences_equal_to_training_ones_and_small_domains_are_counted_warnings(tmp_path, capsys):
    from conftest import write_scenario
    lines = [line(1, (0, 1), (3, 2), (1, 3)), line(2, (4, 1), (0, 2), (2, 3), (5, 4))]
    folder = write_scenario(tmp_path / "s", lines)  # valid and test hold the training lines
    code, text = call(train.main, ["--data-dir", folder, "--models", "sasrec", "--target", "X", "--epochs", 1,
                                   "--device", "cpu", "--out", tmp_path / "o"], capsys, folder)
    assert code == 0
    assert "warning: 2 of 2 test sequences repeat a training sequence (their last 16 items)" in text
    assert "warning: domain X has 3 items: its 999 sampled negatives repeat some of the other 2" in text


def test_item_lists_ignore_trailing_whitespace_as_the_sequence_files_do(tiny_dir, tmp_path):
    from data import read_items
    scenario = tmp_path / "scenario"
    shutil.copytree(tiny_dir, scenario)
    for name in ("Alist.txt", "Blist.txt"):
        lines = (scenario / name).read_text().splitlines()
        (scenario / name).write_text("".join(f"{text}\t \r\n" for text in lines))
    assert read_items(scenario) == read_items(tiny_dir)


# ----------------------------------------------------------------------------- tools/report.py compare

REPORTS = [  # (case, results.json of the second run from the finished one's, expected message)
    ("the summary a list", lambda r: {**r, "summary": []}, "summary should be an object, found []"),
    ("a metric a string", lambda r: {**r, "summary": {"ifcdsr": {"valid": {"X": {"sampled999": {"MRR": {
        "mean": "9.1", "std": None}}}}, "test": {"X": {}}}}}, 'summary/ifcdsr/valid/X/sampled999/MRR/mean should be '
     'a number, found "9.1"'),
    ("a seed a string", lambda r: {**r, "runs": {**r["runs"], "ifcdsr": [{"seed": "0"}]}},
     'runs/ifcdsr/0/seed should be a number or null, found "0"'),
    ("no data_sha256", lambda r: {k: v for k, v in r.items() if k != "data_sha256"},
     "the top level has no key 'data_sha256'"),
    ("a list, not an object", lambda r: [r], "the top level has no key 'data_sha256'"),
    ("a FIFO", lambda r: "fifo", "results.json: not a regular file but a FIFO"),
]


@pytest.mark.parametrize("case,edit,message", REPORTS, ids=[c[0] for c in REPORTS])
def test_compare_names_the_key_and_type_of_a_foreign_results_file(case, edit, message, finished, tmp_path, capsys):
    from tools import report
    other = tmp_path / "other"
    shutil.copytree(finished, other)
    edited = edit(json.loads((finished / "results.json").read_text()))
    put(other / "results.json", edited if edited == "fifo" else json.dumps(edited).encode())
    code, text = call(report.main, ["compare", finished, other], capsys, finished, other)
    assert code == 2 and message in text and str(other) in text


def test_compare_writes_to_a_terminal_that_cannot_encode_its_signs(finished):
    result = subprocess.run([sys.executable, "-m", "tools.report", "compare", finished, finished], cwd=ROOT,
                            capture_output=True, text=True, env={**os.environ, "PYTHONIOENCODING": "ascii"})
    assert result.returncode == 0 and "Traceback" not in result.stderr
    assert "test \\u2212 reference" in result.stdout and "| run | popularity | X |" in result.stdout


# ----------------------------------------------------------------------------- memory

def test_a_checkpoint_whose_config_does_not_fit_its_weights_is_refused_before_the_model_is_built(finished, tiny_dir,
                                                                                                   tmp_path, capsys):
    state = torch.load(finished / "ifcdsr" / "seed0" / "best_X.pt", weights_only=True)
    state["config"].update(q=4096, n_blocks=64)
    torch.save(state, tmp_path / "best_X.pt")
    code, text = call(train.main, ["--data-dir", tiny_dir, "--eval-only", tmp_path / "best_X.pt"], capsys)
    assert code == 2 and "its weights do not fit the model its config builds (E_id.weight:" in text


def test_an_allocation_that_fails_after_all_is_a_message(tiny_dir, tmp_path, capsys, monkeypatch):
    def no_memory(self, *args):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you "
                           "tried to allocate 68719476736 bytes")
    monkeypatch.setattr(train.Trainer, "step", no_memory)
    code, text = call(train.main, [*FINISHED, "--data-dir", tiny_dir, "--out", tmp_path / "run"], capsys)
    assert code == 2 and "\nerror: out of memory (" in text and "lower batch_size" in text
