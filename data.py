"""Files -> tensors for IFCDSR: the C2DSR scenario format, image embeddings, and
the generated demo scenario.

A scenario directory holds (C2DSR's format, see README "Data format"):
    Alist.txt, Blist.txt     one item a line: raw_id<TAB>ASIN<TAB>local_index
    traindata_new.txt        one user a line: user<TAB>inter_id<TAB>item|unix_ts|date|<TAB>...
    validdata_new.txt        same; the last item (by time) is the ground truth
    testdata_new.txt         same
    image_embeddings.npy     (|X|+|Y|, e) float32 CLIP image embeddings, row = global id

Items live in one global id space: domain X (Alist) has ids 0..|X|-1, domain Y
(Blist) has ids |X|..|X|+|Y|-1, and the padding id is N = |X|+|Y|.

Shapes: S sequences, L = max_len positions (left-padded, so the most recent
item of every view is at position L-1).
"""
from __future__ import annotations

import argparse
import ast
import collections
import gzip
import http.client
import io
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from array import array
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent
SCENARIOS = {"food_kitchen": ROOT / "data" / "Food-Kitchen", "movie_book": ROOT / "data" / "Movie-Book"}
SPLIT_FILES = {"train": "traindata_new.txt", "valid": "validdata_new.txt", "test": "testdata_new.txt"}
EMBEDDINGS_FILE = "image_embeddings.npy"


class DataError(Exception):
    """Bad input. The message is for the user: file, line, expected, found, what to do."""


@dataclass
class Items:
    asins: list[str]  # ASIN of every item, in global id order (the key for its image)
    num_x: int  # |X|, items of domain X (Alist.txt)
    num_y: int  # |Y|, items of domain Y (Blist.txt)

    @property
    def num_items(self) -> int:  # N = |X| + |Y|; also the padding id
        return self.num_x + self.num_y


@dataclass
class Views:
    """The three views of a batch of sequences, each a left-padded (S, L) LongTensor."""

    x: torch.Tensor  # S^X: the user's domain-X items in order, compacted
    y: torch.Tensor  # S^Y: the user's domain-Y items in order, compacted
    xy: torch.Tensor  # S^{X+Y}: the merged sequence

    def __getitem__(self, index) -> "Views":
        return Views(self.x[index], self.y[index], self.xy[index])

    def to(self, device, non_blocking: bool = False) -> "Views":
        return Views(*(v.to(device, non_blocking=non_blocking) for v in (self.x, self.y, self.xy)))


@dataclass
class TrainSet:
    inputs: Views  # items up to position t of each view
    targets: Views  # the next item of the same view at each position (padding id where none)

    def __len__(self) -> int:
        return self.inputs.xy.shape[0]


@dataclass
class EvalSet:
    history: Views  # everything before the ground truth, cut to the last L items
    target: torch.Tensor  # (S,) ground-truth global item id

    def __len__(self) -> int:
        return self.target.shape[0]

    def subset(self, mask: torch.Tensor) -> "EvalSet":
        return EvalSet(self.history[mask], self.target[mask])


@dataclass
class Scenario:
    name: str
    path: Path
    items: Items
    train: TrainSet
    valid: EvalSet
    test: EvalSet
    E_img: torch.Tensor | None  # (N, e) frozen image embeddings, or None with --no-image


# ----------------------------------------------------------------------------- reading


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path}: file not found. A scenario directory needs Alist.txt, Blist.txt, "
                        f"{', '.join(SPLIT_FILES.values())} (see README 'Get the real data').")
    with open(path, encoding="utf-8") as f:
        lines = [line.rstrip("\r\n") for line in f]
    if not any(line.strip() for line in lines):
        raise DataError(f"{path}: the file is empty; expected at least one line.")
    return lines


def _read_item_list(path: Path) -> list[str]:
    """Alist/Blist: raw_id<TAB>ASIN<TAB>local_index; returns ASINs ordered by local index."""
    rows = {}
    for lineno, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 3 or not fields[2].strip().isdigit():
            raise DataError(f"{path}:{lineno}: expected 'raw_id<TAB>ASIN<TAB>local_index', found {line!r}.")
        index = int(fields[2])
        if index in rows:
            raise DataError(f"{path}:{lineno}: local index {index} appears twice.")
        rows[index] = fields[1].strip()
    if sorted(rows) != list(range(len(rows))):
        missing = next(i for i in range(len(rows)) if i not in rows)
        raise DataError(f"{path}: local indices must be 0..{len(rows) - 1} without gaps; {missing} is missing.")
    return [rows[i] for i in range(len(rows))]


def read_items(scenario_dir: str | Path) -> Items:
    scenario_dir = Path(scenario_dir)
    asins_x = _read_item_list(scenario_dir / "Alist.txt")
    asins_y = _read_item_list(scenario_dir / "Blist.txt")
    return Items(asins_x + asins_y, len(asins_x), len(asins_y))


def read_sequences(path: Path, num_items: int) -> list[list[int]]:
    """One list of global item ids per line, sorted stably by unix timestamp."""
    sequences = []
    for lineno, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        fields = [f for f in line.split("\t") if f.strip()]
        events = []
        for token in fields[2:]:
            parts = token.split("|")
            if len(parts) < 2 or not parts[0].strip().isdigit() or not parts[1].strip().lstrip("-").isdigit():
                raise DataError(f"{path}:{lineno}: expected an interaction 'item|unix_ts|date|', found {token!r}.")
            item, ts = int(parts[0]), int(parts[1])
            if item >= num_items:
                raise DataError(f"{path}:{lineno}: item id {item} is out of range; Alist+Blist define "
                                f"{num_items} items (ids 0..{num_items - 1}). Is this the right scenario?")
            events.append((ts, item))
        if len(events) < 2:
            raise DataError(f"{path}:{lineno}: a sequence needs at least 2 interactions (history + target), "
                            f"found {len(events)}.")
        events.sort(key=lambda e: e[0])  # Python's sort is stable: equal timestamps keep file order
        sequences.append([item for _, item in events])
    return sequences


def load_image_embeddings(path: Path, num_items: int) -> torch.Tensor:
    if not path.is_file():
        raise DataError(
            f"{path}: image embeddings not found. Build them with\n"
            f"    python clip_loader.py embed --scenario-dir {path.parent} --images {path.parent / 'images'}\n"
            f"(README 'Getting image embeddings'), or train the ID-only model with --no-image.")
    try:
        E = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise DataError(f"{path}: not a readable .npy array ({err}).") from None
    if E.ndim != 2 or E.shape[0] != num_items:
        raise DataError(f"{path}: expected shape ({num_items}, e), one row per item of Alist+Blist; "
                        f"found {E.shape}. Rebuild it for this scenario.")
    if not np.issubdtype(E.dtype, np.floating):
        raise DataError(f"{path}: expected a float32 array, found dtype {E.dtype}.")
    bad = ~np.isfinite(E).all(axis=1)
    if bad.any():
        raise DataError(f"{path}: row {int(np.argmax(bad))} (and {int(bad.sum()) - 1} more) has a non-finite "
                        f"value; expected finite numbers (an all-zero row means 'no image').")
    return torch.from_numpy(E.astype(np.float32))


# ----------------------------------------------------------------------------- tensors


def _left_pad(rows: list[list[int]], length: int, pad: int) -> torch.Tensor:
    out = np.full((len(rows), length), pad, dtype=np.int64)
    for r, row in enumerate(rows):
        if row:
            out[r, length - len(row):] = row
    return torch.from_numpy(out)


def _views(rows: list[list[int]], num_x: int, length: int, pad: int) -> Views:
    xs = [[i for i in row if i < num_x] for row in rows]
    ys = [[i for i in row if i >= num_x] for row in rows]  # domain Y iff id >= |X|
    return Views(_left_pad(xs, length, pad), _left_pad(ys, length, pad), _left_pad(rows, length, pad))


def make_train_set(sequences: list[list[int]], num_x: int, max_len: int, pad: int) -> TrainSet:
    """Every next-item position of every view: input view[:-1], target view[1:]."""
    cut = [seq[-(max_len + 1):] for seq in sequences]  # inputs of at most max_len items
    full = _views(cut, num_x, max_len + 1, pad)  # (S, L+1); left padding keeps view[:, 1:] aligned
    inputs, targets = full[:, :-1], full[:, 1:]
    # a view's first item is no target: nothing precedes it (its input position is padding)
    for v in ("x", "y", "xy"):
        setattr(targets, v, getattr(targets, v).masked_fill(getattr(inputs, v) == pad, pad))
    return TrainSet(inputs, targets)


def make_eval_set(sequences: list[list[int]], num_x: int, max_len: int, pad: int) -> EvalSet:
    histories = [seq[:-1][-max_len:] for seq in sequences]
    return EvalSet(_views(histories, num_x, max_len, pad), torch.tensor([seq[-1] for seq in sequences]))


def load_scenario(path: str | Path, *, max_len: int, use_images: bool, name: str | None = None) -> Scenario:
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path}: scenario directory not found (see README 'Get the real data').")
    items = read_items(path)
    pad = items.num_items
    seqs = {split: read_sequences(path / file, items.num_items) for split, file in SPLIT_FILES.items()}
    E_img = load_image_embeddings(path / EMBEDDINGS_FILE, items.num_items) if use_images else None
    return Scenario(
        name=name or path.name, path=path, items=items,
        train=make_train_set(seqs["train"], items.num_x, max_len, pad),
        valid=make_eval_set(seqs["valid"], items.num_x, max_len, pad),
        test=make_eval_set(seqs["test"], items.num_x, max_len, pad),
        E_img=E_img,
    )


def resolve_scenario(name: str | None, data_dir: str | None, seed: int) -> tuple[str, Path]:
    """--scenario NAME or --data-dir DIR -> (name, directory); generates the demo when asked."""
    if data_dir is not None:
        return Path(data_dir).name, Path(data_dir)
    if name == "demo":
        return "demo", make_demo(ROOT / "data" / f"demo-seed{seed}", seed=seed)
    if name in SCENARIOS:
        return name, SCENARIOS[name]
    raise DataError(f"unknown scenario {name!r}; expected one of demo, {', '.join(SCENARIOS)}, "
                    f"or --data-dir DIR for any C2DSR-format folder.")


# ----------------------------------------------------------------------------- writing


def write_item_list(path: Path, asins: list[str], first_raw_id: int) -> None:
    """Alist/Blist: raw_id<TAB>ASIN<TAB>local_index, with raw_id = first_raw_id + local_index."""
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(f"{first_raw_id + j}\t{asin}\t{j}\n" for j, asin in enumerate(asins))


def write_sequences(path: Path, rows) -> None:
    """rows: (user, inter_id, [(global item id, unix_ts), ...] in time order) -> one sequence line each."""
    with open(path, "w", encoding="utf-8") as f:
        for user, inter_id, events in rows:
            f.write(f"{user}\t{inter_id}\t" + "\t".join(
                f"{i}|{t}|{datetime.fromtimestamp(t, timezone.utc):%Y-%m-%d %H:%M:%S}|" for i, t in events) + "\n")


# ----------------------------------------------------------------------------- demo scenario


@dataclass
class DemoSpec:
    """Sizes and strengths of the generated demo scenario (README 'The demo scenario')."""

    num_x: int = 1000  # items in domain X (more than 999, for the sampled protocol)
    num_y: int = 1200  # items in domain Y
    num_users: int = 3000  # one sequence each; the latest third become valid/test
    categories: int = 16  # shared across both domains: a user's taste carries over
    style_dim: int = 8  # a visual style that users prefer, visible only in the image
    image_dim: int = 64  # e of the demo's image embeddings (the real CLIP has 512)
    stay: float = 0.6  # probability that the next item keeps the current category (sequential signal)
    style_weight: float = 3.0  # how strongly a user's style preference picks items
    no_image: float = 0.05  # share of items without an image (zero rows)
    min_len: int = 8
    max_len: int = 16


def make_demo(out: Path, *, seed: int, spec: DemoSpec = DemoSpec()) -> Path:
    """Write a deterministic two-domain scenario to `out` (once; later calls with the same spec reuse it)."""
    recipe = json.dumps({"seed": seed, **asdict(spec)}, sort_keys=True)
    if (out / "demo.json").is_file() and (out / "demo.json").read_text() == recipe:
        return out
    rng = np.random.default_rng(seed)
    N = spec.num_x + spec.num_y
    domain = np.r_[np.zeros(spec.num_x, int), np.ones(spec.num_y, int)]
    category = rng.integers(0, spec.categories, N)
    popularity = rng.lognormal(0.0, 1.2, N)  # long tail
    style = rng.normal(size=(N, spec.style_dim))
    style /= np.linalg.norm(style, axis=1, keepdims=True)
    # image = category prototype + a projection of the item's style + noise (unnormalised, like CLIP)
    prototypes = rng.normal(size=(spec.categories, spec.image_dim))
    style_proj = rng.normal(size=(spec.style_dim, spec.image_dim))
    E_img = prototypes[category] + 0.8 * style @ style_proj + 0.5 * rng.normal(size=(N, spec.image_dim))
    E_img[rng.random(N) < spec.no_image] = 0.0

    sequences, last_time = [], []
    for _ in range(spec.num_users):
        taste = rng.dirichlet(np.full(spec.categories, 0.3))  # few favourite categories, both domains
        liked_style = rng.normal(size=spec.style_dim)
        liked_style /= np.linalg.norm(liked_style)
        share_x = rng.uniform(0.25, 0.75)
        n = int(rng.integers(spec.min_len, spec.max_len + 1))
        domains = (rng.random(n) >= share_x).astype(int)
        domains[rng.permutation(n)[:6]] = [0, 0, 0, 1, 1, 1]  # at least 3 items of each domain
        current = rng.choice(spec.categories, p=taste)
        seq = []
        for d in domains:
            if rng.random() > spec.stay:
                current = rng.choice(spec.categories, p=taste)
                taste = 0.9 * taste + 0.1 * np.eye(spec.categories)[current]  # tastes drift
            pool = np.flatnonzero((domain == d) & (category == current))
            if len(pool) == 0:
                pool = np.flatnonzero(domain == d)
            w = popularity[pool] * np.exp(spec.style_weight * style[pool] @ liked_style)
            seq.append(int(rng.choice(pool, p=w / w.sum())))
        start = int(rng.integers(1_300_000_000, 1_500_000_000))
        times = start + np.cumsum(rng.integers(3600, 30 * 86400, n))
        sequences.append(list(zip(seq, times.tolist())))
        last_time.append(times[-1])

    order = np.argsort(last_time, kind="stable")
    n_train = len(order) - len(order) // 3
    held = order[n_train:]  # the latest sequences: alternately valid and test
    splits = {"train": order[:n_train], "valid": held[0::2], "test": held[1::2]}

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))  # same filesystem: rename is atomic
    tmp.chmod(0o755)  # mkdtemp makes it private
    try:
        for fname, lo, hi, tag in (("Alist.txt", 0, spec.num_x, "A"), ("Blist.txt", spec.num_x, N, "B")):
            write_item_list(tmp / fname, [f"DEMO{tag}{j:06d}" for j in range(hi - lo)], 10_000 + lo)
        for split, users in splits.items():
            write_sequences(tmp / SPLIT_FILES[split], ((u, u, sequences[u]) for u in users))
        np.save(tmp / EMBEDDINGS_FILE, E_img.astype(np.float32))
        (tmp / "demo.json").write_text(recipe)  # written last: marks a complete scenario
        if out.exists():  # an earlier, interrupted attempt
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# ----------------------------- raw Amazon data: images and scenario building (python data.py images|build)
#
# Amazon's dumps come in three generations, one record a line, plain or gzipped:
#   metadata 2014       Python-literal dict   {'asin', 'title', 'imUrl'}
#   metadata 2018       JSON                  {"asin", "title", "imageURLHighRes": [...], "imageURL": [...]}
#   metadata 2023       JSON                  {"parent_asin", "title", "images": [{"large", "hi_res", ...}]}
#   reviews 2014        CSV (ratings only)    user,item,rating,timestamp                 (seconds)
#   reviews 2014, 2018  JSON                  {"reviewerID", "asin", "unixReviewTime"}   (seconds)
#   reviews 2023        JSON                  {"user_id", "parent_asin", "timestamp"}    (milliseconds)
# They are GBs: every reader streams them and keeps only what the scenario needs.

ITEMS_FILE = "items.tsv"  # read by `clip_loader.py embed --missing text`
ITEMS_HEADER = "global_id\tdomain\tasin\ttitle\timage_url"
SAVED_FORMATS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}  # saved as downloaded; other formats become PNG
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")  # the image files that clip_loader.py embed finds, in this order
REVIEW_LAYOUTS = ("Amazon reviews in one of three layouts: the 2014 ratings CSV 'user,item,rating,timestamp', "
                  "2014/2018 JSON lines with reviewerID, asin, unixReviewTime, or 2023 JSON lines with user_id, "
                  "parent_asin, timestamp (ms)")
REVIEW_TIMES_MS = (788_918_400_000, 2_208_988_800_000)  # 1995-01-01 .. 2040-01-01: anything else is a wrong unit


class BadLines:
    """The malformed lines of one input file: counted and skipped, the first few line numbers kept for the
    report; with strict=True the first one is an error."""

    def __init__(self, path: Path, expected: str, strict: bool):
        self.path, self.expected, self.strict = path, expected, strict
        self.count, self.first = 0, []

    def add(self, lineno: int, raw: bytes) -> None:
        if self.strict:
            found = raw.decode("utf-8", "replace").strip()[:120]
            raise DataError(f"{self.path}:{lineno}: expected {self.expected}; found {found!r}. Fix or delete the "
                            f"line, or leave out --strict to skip malformed lines.")
        self.count += 1
        if len(self.first) < 5:
            self.first.append(lineno)

    def report(self) -> None:
        if self.count:
            print(f"warning: {self.path}: skipped {self.count:,} malformed line(s) (first: line "
                  f"{', '.join(map(str, self.first))}); --strict makes them an error", file=sys.stderr)


def _raw_lines(path: Path, what: str):
    """(line number, bytes) of a plain or gzipped file, streamed, with a progress line every 10 s."""
    if not path.is_file():
        raise DataError(f"{path}: file not found; expected {what}.")
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    lineno, shown = 0, time.monotonic()
    with (gzip.open if gzipped else open)(path, "rb") as f:
        try:
            for lineno, raw in enumerate(f, 1):
                yield lineno, raw
                if lineno % 65536 == 0 and time.monotonic() - shown > 10:
                    shown = time.monotonic()
                    print(f"  {path.name}: {lineno:,} lines read", file=sys.stderr, flush=True)
        except (OSError, EOFError, zlib.error) as err:  # a truncated or corrupt .gz
            raise DataError(f"{path}: unreadable after line {lineno} ({err}); is the download complete?") from None


def _parse_record(raw: bytes) -> dict | None:
    """One line -> dict: JSON (2014 reviews, 2018, 2023) or a Python literal (2014 metadata); None if neither."""
    try:
        text = raw.decode("utf-8").strip()
        try:
            record = json.loads(text)
        except json.JSONDecodeError:
            record = ast.literal_eval(text)  # literals only: it never runs code, unlike eval()
    except (ValueError, SyntaxError, MemoryError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    return record if isinstance(record, dict) else None


def _one_line(text: str) -> str:
    """Tabs, newlines and runs of spaces -> one space, so that a title fits in a TSV field."""
    return " ".join(text.split())


def _image_url(record: dict) -> str:
    """The URL of a metadata record's main image; '' when it has none."""
    if isinstance(record.get("imUrl"), str):  # 2014
        return record["imUrl"]
    for field in ("imageURLHighRes", "imageURL"):  # 2018; imageURL holds 40-pixel thumbnails, the last resort
        urls = record.get(field)
        if isinstance(urls, list) and urls and isinstance(urls[0], str):
            return urls[0]
    images = [image for image in record.get("images") or [] if isinstance(image, dict)]  # 2023
    # Note: of a 2023 product's pictures we take the MAIN one (else the first), in the 'large' size (~500 px, like
    # the 2014 imUrl, and plenty for CLIP's 224 px input), falling back to hi_res, then thumb.
    for image in sorted(images, key=lambda image: image.get("variant") != "MAIN"):
        for size in ("large", "hi_res", "thumb"):
            if isinstance(image.get(size), str) and image[size]:
                return image[size]
    return ""


def read_products(paths: list[Path], wanted: set[str], *, strict: bool = False) -> dict[str, tuple[str, str]]:
    """ASIN -> (title, image URL), from metadata files of any layout, for the wanted ASINs only.

    Note: an item is looked up by `asin` (2014, 2018) or `parent_asin` (2023, one record per parent product);
    so the child ASIN of an older scenario has no 2023 record unless it is itself a parent.
    """
    found: dict[str, tuple[str, str]] = {}
    for path in map(Path, paths):
        print(f"reading metadata {path}", flush=True)
        bad = BadLines(path, "an Amazon metadata record: a JSON object or Python-literal dict with 'asin' or "
                             "'parent_asin'", strict)
        for lineno, raw in _raw_lines(path, "Amazon metadata (2014, 2018 or 2023 layout)"):
            if not raw.strip():
                continue
            record = _parse_record(raw)
            asin = record and (record.get("asin") or record.get("parent_asin"))
            if not isinstance(asin, str) or not asin:
                bad.add(lineno, raw)
            elif asin in wanted:
                title = record.get("title") if isinstance(record.get("title"), str) else ""
                old_title, old_url = found.get(asin, ("", ""))
                # a product listed twice (the 2018 dump has such rows) keeps the first non-empty title and URL
                found[asin] = (old_title or title, old_url or _image_url(record))
        bad.report()
    return found


def write_items_tsv(path: Path, items: Items, products: list[tuple[str, str]]) -> None:
    """items.tsv: the header, then one row per item in global id order; (title, image URL) per item, '' if unknown."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(ITEMS_HEADER + "\n")
        for g, (asin, (title, url)) in enumerate(zip(items.asins, products)):
            f.write(f"{g}\t{'X' if g < items.num_x else 'Y'}\t{asin}\t{_one_line(title)}\t{_one_line(url)}\n")
    os.replace(tmp, path)


# ------------------------------------------------ images


class _Failure(Exception):
    """Why an item has no image; the message goes to images/failures.tsv, its part before ':' is counted."""

    def __init__(self, reason: str, *, retry: bool = False, wait: float | None = None):
        super().__init__(reason)
        self.retry, self.wait = retry, wait  # worth another attempt? after the server's Retry-After seconds?


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to an http(s) URL (urllib alone also follows ftp://)."""

    def http_error_302(self, req, fp, code, msg, headers):
        target = urllib.parse.urljoin(req.full_url, headers.get("Location") or headers.get("URI") or "")
        if urllib.parse.urlsplit(target).scheme not in ("http", "https"):
            fp.close()
            raise _Failure(f"redirect refused: to {target[:100]}")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _get(opener, url: str, *, timeout: float, max_bytes: int) -> bytes:
    """One GET -> the body; `timeout` bounds every socket wait and the whole download."""
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(url, headers={"User-Agent": "IFCDSR-data/1.0 (research; urllib)"})
    try:
        with opener.open(request, timeout=timeout) as response:
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise _Failure(f"too large: {int(declared):,} bytes, the limit is {max_bytes:,}")
            body = bytearray()
            while chunk := response.read(1 << 16):
                body += chunk
                if len(body) > max_bytes:
                    raise _Failure(f"too large: over {max_bytes:,} bytes")
                if time.monotonic() > deadline:
                    raise _Failure(f"timeout: over {timeout:g} s", retry=True)
            return bytes(body)
    except urllib.error.HTTPError as err:
        err.close()
        wait = err.headers.get("Retry-After", "") if err.headers else ""
        raise _Failure(f"HTTP {err.code}", retry=err.code == 429 or err.code >= 500,
                       wait=float(wait) if wait.strip().isdigit() else None) from None
    except urllib.error.URLError as err:
        if isinstance(err.reason, TimeoutError):
            raise _Failure(f"timeout: over {timeout:g} s", retry=True) from None
        raise _Failure(f"connection error: {err.reason}", retry=True) from None
    except TimeoutError:
        raise _Failure(f"timeout: over {timeout:g} s", retry=True) from None
    except (OSError, http.client.HTTPException) as err:  # reset, incomplete body, bad status line
        raise _Failure(f"connection error: {err!r}", retry=True) from None
    except ValueError as err:  # a malformed URL
        raise _Failure(f"bad URL: {err}") from None


def fetch(opener, url: str, *, timeout: float, retries: int, backoff: float, max_bytes: int) -> bytes:
    """GET an http(s) URL, with up to `retries` more attempts after a 429, a 5xx, a timeout or a dropped
    connection, waiting backoff·2^k s before attempt k+1 (or the server's Retry-After; at most 60 s)."""
    # Note: the issue asks for retries on 429/5xx; timeouts and dropped connections are as transient, so they
    # are retried as well. Other 4xx, non-images and refused redirects are final.
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise _Failure(f"not an http(s) URL: {url[:100]}")
    attempt = 0
    while True:
        try:
            return _get(opener, url, timeout=timeout, max_bytes=max_bytes)
        except _Failure as failure:
            if not failure.retry or attempt == retries:
                raise
            time.sleep(min(60.0, backoff * 2 ** attempt if failure.wait is None else failure.wait))
            attempt += 1


def _as_image_file(data: bytes) -> tuple[str, bytes]:
    """(suffix, bytes to save) when `data` decodes completely as an image; _Failure otherwise."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # decodes every pixel: a truncated file fails here rather than in clip_loader.py
            if image.format in SAVED_FORMATS:
                return SAVED_FORMATS[image.format], data
            converted = io.BytesIO()
            image.convert("RGB").save(converted, "PNG")  # e.g. a GIF, whose suffix clip_loader.py does not read
            return ".png", converted.getvalue()
    except Image.UnidentifiedImageError:
        raise _Failure("not an image") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise _Failure(f"corrupt image: {err}") from None


def _get_image(asin: str, url: str, no_url: str, files: list[Path], images_dir: Path, opener,
               settings: dict) -> tuple[bool, str]:
    """Makes images/<ASIN>.<ext> a valid image, unless one of its `files` already is one:
    (True, 'downloaded' or 'already present') or (False, the reason; `no_url` when there is no URL)."""
    if not (asin.isascii() and asin.isalnum()):
        return False, "ASIN is not a safe file name"
    stale = []  # files of this item that do not decode: replaced by a good download
    for path in files:
        try:
            _as_image_file(path.read_bytes())
            return True, "already present"
        except _Failure:
            stale.append(path)
    if not url:
        return False, no_url
    try:
        suffix, data = _as_image_file(fetch(opener, url, **settings))
    except _Failure as failure:
        return False, str(failure)
    target = images_dir / f"{asin}{suffix}"
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)  # a reader never sees half an image
    for path in stale:
        if path != target:
            path.unlink()  # undecodable, and it would shadow the new file for clip_loader.py
    return True, "downloaded"


def download_images(scenario_dir, meta_paths, *, workers: int = 16, timeout: float = 30.0, retries: int = 3,
                    backoff: float = 1.0, max_bytes: int = 20 << 20, strict: bool = False) -> dict:
    """`python data.py images`: writes <scenario>/items.tsv and images/<ASIN>.<ext> for every item whose
    metadata names an image, and images/failures.tsv with the reason for each other item. A rerun fetches
    only what is missing. Returns {'X': Counter(outcome), 'Y': Counter(outcome)}."""
    if workers < 1 or timeout <= 0:
        raise DataError(f"--workers must be at least 1 and --timeout positive; found {workers} and {timeout}.")
    scenario_dir = Path(scenario_dir)
    items = read_items(scenario_dir)
    products = read_products(meta_paths, set(items.asins), strict=strict)
    if not products:
        raise DataError(f"none of the {items.num_items:,} ASINs of {scenario_dir} (e.g. {items.asins[0]}) is in "
                        f"{', '.join(map(str, meta_paths))}; are these the metadata files of its two domains?")
    write_items_tsv(scenario_dir / ITEMS_FILE, items, [products.get(a, ("", "")) for a in items.asins])
    images_dir = scenario_dir / "images"
    images_dir.mkdir(exist_ok=True)
    print(f"wrote {scenario_dir / ITEMS_FILE}: {len(products):,} of {items.num_items:,} items found in the "
          f"metadata, {sum(bool(url) for _, url in products.values()):,} with an image URL", flush=True)

    opener = urllib.request.build_opener(_HttpOnlyRedirects)
    settings = dict(timeout=timeout, retries=retries, backoff=backoff, max_bytes=max_bytes)
    on_disk = {entry.name for entry in os.scandir(images_dir)}
    counts = {"X": collections.Counter(), "Y": collections.Counter()}
    failures = []  # (global id, reason)

    def record(g: int, ok: bool, outcome: str) -> None:
        counts["X" if g < items.num_x else "Y"][outcome if ok else outcome.split(":")[0]] += 1
        if not ok:
            failures.append((g, outcome))

    pool = ThreadPoolExecutor(workers)
    try:
        futures = {}
        for g, asin in enumerate(items.asins):
            url = products.get(asin, ("", ""))[1]
            no_url = "no image URL" if asin in products else "not in metadata"
            files = [images_dir / f"{asin}{s}" for s in IMAGE_SUFFIXES if f"{asin}{s}" in on_disk]
            if url or files:
                futures[pool.submit(_get_image, asin, url, no_url, files, images_dir, opener, settings)] = g
            else:
                record(g, False, no_url)  # nothing to check or fetch
        tty, start = sys.stderr.isatty(), time.monotonic()
        shown, lead = start, "\r" if tty else ""
        for done, future in enumerate(as_completed(futures), items.num_items - len(futures) + 1):
            record(futures[future], *future.result())
            now = time.monotonic()
            if now - shown > (1 if tty else 30) or done == items.num_items:
                shown = now
                print(f"{lead}images: {done:,}/{items.num_items:,} done, {len(failures):,} failed, "
                      f"{(done - items.num_items + len(futures)) / max(now - start, 1e-6):.1f} checked or fetched/s",
                      end="" if tty and done < items.num_items else "\n", file=sys.stderr, flush=True)
    finally:
        pool.shutdown(cancel_futures=True)  # after Ctrl-C: no new downloads, the running ones finish

    tmp = images_dir / "failures.tsv.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("global_id\tdomain\tasin\treason\timage_url\n")
        for g, reason in sorted(failures):
            asin = items.asins[g]
            f.write(f"{g}\t{'X' if g < items.num_x else 'Y'}\t{asin}\t{_one_line(reason)}\t"
                    f"{_one_line(products.get(asin, ('', ''))[1])}\n")
    os.replace(tmp, images_dir / "failures.tsv")

    have = sum(counts[d]["downloaded"] + counts[d]["already present"] for d in counts)
    print(f"{have:,} of {items.num_items:,} items have an image in {images_dir}")
    outcomes = sorted({o for c in counts.values() for o in c},
                      key=lambda o: (o not in ("downloaded", "already present"), o))
    print(f"{'outcome':<24}{'X':>10}{'Y':>10}")
    for outcome in outcomes:
        print(f"{outcome:<24}{counts['X'][outcome]:>10,}{counts['Y'][outcome]:>10,}")
    print(f"reasons per item: {images_dir / 'failures.tsv'}")
    return counts


# ------------------------------------------------ building a scenario from raw reviews (the paper's §4)


def _review(raw: bytes) -> tuple[str, str, str, int] | None:
    """(layout, user, item, unix time in ms) of one review line; None when it is in no known layout."""
    if raw.lstrip().startswith(b"{"):
        record = _parse_record(raw) or {}
        if {"reviewerID", "asin", "unixReviewTime"} <= record.keys():
            layout, user, item, stamp, scale = ("2014/2018 JSON", record["reviewerID"], record["asin"],
                                                record["unixReviewTime"], 1000)
        elif {"user_id", "parent_asin", "timestamp"} <= record.keys():
            # Note: a 2023 review names its item by parent_asin, the key of the 2023 metadata, so the variants
            # of one product (sizes, colours) are one item.
            layout, user, item, stamp, scale = ("2023 JSON", record["user_id"], record["parent_asin"],
                                                record["timestamp"], 1)
        else:
            return None
    else:
        try:
            user, item, rating, stamp = raw.decode("utf-8").strip().split(",")
            float(rating)
        except ValueError:  # not 4 fields, not UTF-8, or no rating
            return None
        layout, scale = "2014 ratings CSV", 1000
    try:
        ms = int(stamp) * scale
    except (TypeError, ValueError):
        return None
    ids_ok = all(isinstance(s, str) and s.split() == [s] for s in (user, item))  # non-empty, no whitespace
    return (layout, user, item, ms) if ids_ok and REVIEW_TIMES_MS[0] <= ms <= REVIEW_TIMES_MS[1] else None


def read_reviews(path: Path, *, strict: bool = False):
    """(user, item, unix time in ms) of every review of a file, streamed. The file's layout is that of its
    first review; a line in another layout, or in none, is malformed."""
    bad = BadLines(path, REVIEW_LAYOUTS, strict)
    layout, example = None, ""
    for lineno, raw in _raw_lines(path, REVIEW_LAYOUTS):
        if not raw.strip():
            continue
        review = _review(raw)
        if review is None or layout not in (None, review[0]):
            example = example or raw.decode("utf-8", "replace").strip()[:120]
            bad.add(lineno, raw)
            if layout is None and bad.count == 100:
                break  # the wrong kind of file: say so now rather than after reading GBs
            continue
        layout = review[0]
        yield review[1:]
    if layout is None:
        raise DataError(f"{path}: expected {REVIEW_LAYOUTS}; found no such line among its first {bad.count:,} "
                        f"lines with text{f', e.g. {example!r}' if example else ''}. Is it a review file of that "
                        f"kind (metadata goes to --meta-a/--meta-b)?")
    bad.report()


def _read_domain(path: Path, users: dict[str, int], *, add_users: bool, strict: bool):
    """A review file -> (ASINs, and per review: user index, item index, time in ms). With add_users=False the
    reviews of users not already in `users` are dropped: they cannot be in both domains."""
    asins: dict[str, int] = {}
    user, item, ms = array("i"), array("i"), array("q")  # compact: 16 bytes a review
    for name, asin, t in read_reviews(path, strict=strict):
        u = users.setdefault(name, len(users)) if add_users else users.get(name)
        if u is not None:
            user.append(u)
            item.append(asins.setdefault(asin, len(asins)))
            ms.append(t)
    return list(asins), np.array(user, np.int64), np.array(item, np.int64), np.array(ms, np.int64)


def _select(user, item, ms, num_x: int, *, min_count: int, min_per_domain: int, max_len: int) -> np.ndarray:
    """§4's filter on reviews given as arrays (num_x: item indices below it are domain X). Returns the indices of
    the kept reviews, grouped by user, in time order within a user (ties: X before Y, then file order)."""
    U, I = int(user.max()) + 1, int(item.max()) + 1

    def per_domain(rows):  # (U,) reviews in X, (U,) reviews in Y, per user
        in_x = item[rows] < num_x
        return np.bincount(user[rows][in_x], minlength=U), np.bincount(user[rows][~in_x], minlength=U)

    # Note: a user who reviewed an item more than once keeps the earliest review only (C2DSR's sequences
    # never repeat an item).
    order = np.lexsort((ms, item, user))
    repeat = (user[order][1:] == user[order][:-1]) & (item[order][1:] == item[order][:-1])
    rows = np.sort(order[np.r_[True, ~repeat]])
    n_x, n_y = per_domain(rows)
    rows = rows[((n_x > 0) & (n_y > 0))[user[rows]]]
    print(f"users in both domains: {len(np.unique(user[rows])):,} ({len(rows):,} reviews; "
          f"{int(repeat.sum()):,} repeated reviews of an item dropped)", flush=True)

    # Note: the paper filters out users and items with fewer than 10 interactions but does not say whether once;
    # removing some can leave others below 10, so the filter (and "in both domains") is repeated until nothing
    # changes. A user's interactions are counted over both domains.
    rounds = 0
    while True:
        rounds += 1
        n_x, n_y = per_domain(rows)
        keep_user = (n_x > 0) & (n_y > 0) & (n_x + n_y >= min_count)
        keep_item = np.bincount(item[rows], minlength=I) >= min_count
        kept = rows[keep_user[user[rows]] & keep_item[item[rows]]]
        if len(kept) == len(rows):
            break
        rows = kept
    print(f"{min_count}-interaction filter on users and items, stable after {rounds} round(s): "
          f"{len(np.unique(user[rows])):,} users, {int((np.unique(item[rows]) < num_x).sum()):,} X + "
          f"{int((np.unique(item[rows]) >= num_x).sum()):,} Y items, {len(rows):,} reviews", flush=True)

    # Note: the paper orders by time; equal times (2014/2018 stamps are whole days) keep domain X before Y, then
    # the order of the review files.
    rows = rows[np.lexsort((rows, ms[rows], user[rows]))]  # by user, then time, then row (X rows come first)
    u = user[rows]
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
    group_end = np.repeat(np.r_[starts[1:], len(rows)], np.diff(np.r_[starts, len(rows)]))  # per review
    # Note: each user contributes one sequence: the latest max_len (15) interactions of the merged history, as
    # in C2DSR's files (lengths 6..15). The 10-interaction counts above are over whole histories; the
    # 3-per-domain rule is applied to the cut sequence, the one the model sees.
    rows = rows[group_end - np.arange(len(rows)) <= max_len]
    n_x, n_y = per_domain(rows)
    rows = rows[((n_x >= min_per_domain) & (n_y >= min_per_domain))[user[rows]]]
    print(f"latest {max_len} interactions per user, at least {min_per_domain} of each domain: "
          f"{len(np.unique(user[rows])):,} users", flush=True)
    return rows


def build_scenario(reviews_a, reviews_b, meta_a, meta_b, out, *, min_count: int = 10, min_per_domain: int = 3,
                   max_len: int = 15, held_out: float = 0.2, seed: int = 0, strict: bool = False) -> dict:
    """`python data.py build`: a C2DSR-format scenario (Alist, Blist, the three sequence files, userlist.txt,
    items.tsv) from two domains' reviews and metadata, by the paper's §4. Everything is written to a temp
    folder that becomes `out` at the end. Returns (and prints) the Table 1 statistics."""
    out = Path(out)
    if out.exists():
        raise DataError(f"{out} already exists; build never overwrites: choose another --out or remove it.")
    if min_count < 1 or min_per_domain < 1 or max_len < 2 * min_per_domain or not 0 < held_out < 1:
        raise DataError(f"expected --min-count >= 1, --min-per-domain >= 1, --max-len >= 2 x --min-per-domain and "
                        f"0 < --held-out < 1; found {min_count}, {min_per_domain}, {max_len}, {held_out}.")
    users: dict[str, int] = {}
    print(f"reading domain X reviews {reviews_a}", flush=True)
    asins_x, user_x, item_x, ms_x = _read_domain(Path(reviews_a), users, add_users=True, strict=strict)
    print(f"  {len(user_x):,} reviews by {len(users):,} users of {len(asins_x):,} items", flush=True)
    print(f"reading domain Y reviews {reviews_b}, keeping users who reviewed in X", flush=True)
    asins_y, user_y, item_y, ms_y = _read_domain(Path(reviews_b), users, add_users=False, strict=strict)
    print(f"  {len(user_y):,} reviews of {len(asins_y):,} items", flush=True)
    if len(user_y) == 0:
        raise DataError(f"no reviewer of {reviews_a} appears in {reviews_b}; expected two domains of the same dump "
                        f"(the 2023 dump's user ids differ from the 2014/2018 reviewer ids).")
    names = list(users)  # user index -> reviewer id
    del users
    num_x = len(asins_x)
    user, item, ms = np.r_[user_x, user_y], np.r_[item_x, item_y + num_x], np.r_[ms_x, ms_y]  # X items first
    rows = _select(user, item, ms, num_x, min_count=min_count, min_per_domain=min_per_domain, max_len=max_len)
    if len(rows) == 0:
        raise DataError("no user is left after the filters above; lower --min-count or --min-per-domain, or use "
                        "bigger review files.")

    # One sequence per user: rows[starts[s]:ends[s]] in time order. User ids follow the reviewer ids' order.
    # Note: Alist/Blist hold the items that occur in the written sequences (an item that passed the filter
    # only in cut-off parts of histories is left out), sorted by ASIN; raw_id = global id.
    u = user[rows]
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
    ends = np.r_[starts[1:], len(rows)]
    S = len(starts)
    by_name = sorted(range(S), key=lambda s: names[u[starts[s]]])
    user_id = np.empty(S, np.int64)
    user_id[by_name] = np.arange(S)
    raw_asins = asins_x + asins_y  # raw item index -> ASIN
    used = np.unique(item[rows])
    kept = sorted(used[used < num_x], key=raw_asins.__getitem__) + \
        sorted(used[used >= num_x], key=raw_asins.__getitem__)
    items = Items([raw_asins[j] for j in kept], int((used < num_x).sum()), int((used >= num_x).sum()))
    gid = np.full(len(raw_asins), -1, np.int64)
    gid[kept] = np.arange(len(kept))

    # Note: the paper holds out "the latest interaction sequences" without saying how many; we hold out the share
    # --held-out (0.2) whose last interaction is latest (ties: by user id), and a seeded shuffle deals them into
    # equal valid and test halves. With one sequence per user no user is in two splits, and no training
    # interaction is later than any held-out target (the leak of the π-Net/MIFN splits).
    last = ms[rows[ends - 1]]
    order = np.lexsort((user_id, last))
    n_held = round(S * held_out)
    if n_held < 2 or n_held >= S:
        raise DataError(f"{S} sequences with --held-out {held_out} give {n_held} held-out ones; expected at least "
                        f"2 (one valid, one test) and at least 1 for training.")
    held = np.random.default_rng(seed).permutation(order[S - n_held:])
    splits = {"train": order[:S - n_held], "valid": held[:n_held // 2], "test": held[n_held // 2:]}

    x_meta = read_products([meta_a], set(items.asins[:items.num_x]), strict=strict)
    y_meta = read_products([meta_b], set(items.asins[items.num_x:]), strict=strict)
    products = [(x_meta if g < items.num_x else y_meta).get(a, ("", "")) for g, a in enumerate(items.asins)]
    print(f"metadata: {len(x_meta) + len(y_meta):,} of {items.num_items:,} items found, "
          f"{sum(bool(url) for _, url in products):,} with an image URL", flush=True)

    tmp = out.parent / f".{out.name}.{os.getpid()}.tmp"  # beside `out`, so that the rename is atomic
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed build that had the same process id
    tmp.mkdir(parents=True)  # not mkdtemp: the folder gets the user's usual permissions, not 0700
    try:
        write_item_list(tmp / "Alist.txt", items.asins[:items.num_x], 0)
        write_item_list(tmp / "Blist.txt", items.asins[items.num_x:], items.num_x)
        for split, seqs in splits.items():
            # Note: the files hold unix seconds; 2023 milliseconds are cut, and the lines keep their ms order,
            # which the reader's stable sort preserves for events within one second.
            write_sequences(tmp / SPLIT_FILES[split], (
                (user_id[s], user_id[s], [(gid[item[r]], ms[r] // 1000) for r in rows[starts[s]:ends[s]]])
                for s in seqs[np.argsort(user_id[seqs])]))
        with open(tmp / "userlist.txt", "w", encoding="utf-8") as f:
            f.writelines(f"{names[u[starts[s]]]}\t{user_id[s]}\n" for s in by_name)
        write_items_tsv(tmp / ITEMS_FILE, items, products)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    lengths = ends - starts
    target_x = item[rows[ends - 1]] < num_x  # (S,) the domain of each sequence's last item
    stats = {"items": {"X": items.num_x, "Y": items.num_y}, "train": len(splits["train"]),
             "valid": {"X": int(target_x[splits["valid"]].sum()), "Y": int((~target_x[splits["valid"]]).sum())},
             "test": {"X": int(target_x[splits["test"]].sum()), "Y": int((~target_x[splits["test"]]).sum())},
             "avg_length": float(lengths.mean())}
    print(f"wrote {out}\nTable 1 statistics (#valid and #test by the domain of the target, the last item):")
    print(f"{'domain':<8}{'#items':>10}{'#train':>10}{'#valid':>10}{'#test':>10}{'avg.length':>12}")
    print(f"{'X':<8}{items.num_x:>10,}{stats['train']:>10,}{stats['valid']['X']:>10,}{stats['test']['X']:>10,}"
          f"{stats['avg_length']:>12.2f}")
    print(f"{'Y':<8}{items.num_y:>10,}{'-':>10}{stats['valid']['Y']:>10,}{stats['test']['Y']:>10,}")
    return stats


# ------------------------------------------------ command line


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="data.py", description="Raw Amazon data for IFCDSR: item images for a "
                                     "scenario (images) and scenarios built from reviews by the paper's §4 (build).")
    commands = parser.add_subparsers(dest="command", required=True)
    im = commands.add_parser("images", help="items.tsv and images/<ASIN>.<ext> for a scenario, from metadata")
    im.add_argument("--scenario-dir", type=Path, required=True, help="a C2DSR-format folder (Alist.txt, Blist.txt)")
    im.add_argument("--meta", type=Path, nargs="+", required=True,
                    help="metadata files of its domains: 2014, 2018 or 2023 layout, plain or .gz")
    im.add_argument("--workers", type=int, default=16, help="parallel downloads")
    im.add_argument("--timeout", type=float, default=30.0, help="seconds allowed for one image request")
    bu = commands.add_parser("build", help="a scenario from two domains' review and metadata files (paper §4)")
    bu.add_argument("--reviews-a", type=Path, required=True, help="reviews of domain X (Alist)")
    bu.add_argument("--reviews-b", type=Path, required=True, help="reviews of domain Y (Blist)")
    bu.add_argument("--meta-a", type=Path, required=True, help="metadata of domain X, for titles and image URLs")
    bu.add_argument("--meta-b", type=Path, required=True, help="metadata of domain Y")
    bu.add_argument("--out", type=Path, required=True, help="the new scenario folder; must not exist")
    bu.add_argument("--min-count", type=int, default=10, help="fewest interactions of a kept user or item (§4: 10)")
    bu.add_argument("--min-per-domain", type=int, default=3, help="fewest items of each domain per sequence (§4: 3)")
    bu.add_argument("--max-len", type=int, default=15, help="a user's sequence is their latest max-len interactions")
    bu.add_argument("--held-out", type=float, default=0.2, help="share of sequences, the latest, for valid + test")
    bu.add_argument("--seed", type=int, default=0, help="deals the held-out sequences into valid and test")
    for p in (im, bu):
        p.add_argument("--strict", action="store_true", help="a malformed input line is an error (default: skipped)")
    args = parser.parse_args(argv)
    try:
        if args.command == "images":
            download_images(args.scenario_dir, args.meta, workers=args.workers, timeout=args.timeout,
                            strict=args.strict)
        else:
            build_scenario(args.reviews_a, args.reviews_b, args.meta_a, args.meta_b, args.out,
                           min_count=args.min_count, min_per_domain=args.min_per_domain, max_len=args.max_len,
                           held_out=args.held_out, seed=args.seed, strict=args.strict)
    except (DataError, OSError) as err:  # OSError: a folder that cannot be written, a full disk
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: " + ("downloaded images are kept; rerun the same command to fetch the rest"
                                   if args.command == "images" else "nothing was written; rerun to build"),
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
