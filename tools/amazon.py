"""Raw Amazon data for IFCDSR: item images for a scenario, and scenarios built from review dumps by the paper's §4.

    python -m tools.amazon images --scenario-dir DIR --meta META_A META_B     # items.tsv and images/<ASIN>.<ext>
    python -m tools.amazon build --reviews-a R_A --reviews-b R_B --meta-a M_A --meta-b M_B --out DIR

Amazon's dumps come in three generations, one record a line, plain or gzipped:
    metadata 2014       Python-literal dict   {'asin', 'title', 'imUrl'}
    metadata 2018       JSON                  {"asin", "title", "imageURLHighRes": [...], "imageURL": [...]}
    metadata 2023       JSON                  {"parent_asin", "title", "images": [{"large", "hi_res", ...}]}
    reviews 2014        CSV (ratings only)    user,item,rating,timestamp                 (seconds)
    reviews 2014, 2018  JSON                  {"reviewerID", "asin", "unixReviewTime"}   (seconds)
    reviews 2023        JSON                  {"user_id", "parent_asin", "timestamp"}    (milliseconds)
They are GBs: every reader streams them and keeps only what the scenario needs. This module owns
`items.tsv` (one row per item: global id, domain, ASIN, title, image URL), its writer and its reader.
"""
from __future__ import annotations

import argparse
import ast
import gzip
import json
import sys
import zlib
from array import array
from pathlib import Path
from typing import NamedTuple

import numpy as np

from data import Progress, atomic_folder, atomic_write_text, file_problem
from tools import download
from train import bounded, safe_output
from data import NATURAL, SPLIT_FILES, DataError, Items, read_items, read_text_lines, write_item_list, write_sequences

ITEMS_FILE = "items.tsv"  # written by images and build; read by `tools/embed.py --missing text`
ITEMS_HEADER = "global_id\tdomain\tasin\ttitle\timage_url"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")  # the image files that tools/embed.py finds, in this order
REVIEW_LAYOUTS = ("Amazon reviews in one of three layouts: the 2014 ratings CSV 'user,item,rating,timestamp', "
                  "2014/2018 JSON lines with reviewerID, asin, unixReviewTime, or 2023 JSON lines with user_id, "
                  "parent_asin, timestamp (ms)")
MAX_LINE = 1 << 24  # 16 MiB: longer lines of raw files are malformed
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
    """(line number, bytes) of a plain or gzipped file, streamed, with a progress line every 30 s. A line
    longer than MAX_LINE bytes stands as its first MAX_LINE bytes (malformed, then), so that a file without
    newlines is never read into memory whole."""
    if not path.exists():
        raise DataError(f"{path}: file not found; expected {what}.")
    if problem := file_problem(path):  # a FIFO would block the read, /dev/zero be read for ever
        raise DataError(f"{path}: cannot be read ({problem}); expected {what}.")
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    lineno, progress = 0, Progress(f"  {path.name}", None, "lines")
    with (gzip.open if gzipped else open)(path, "rb") as f:
        try:
            while raw := f.readline(MAX_LINE):
                lineno += 1
                while len(raw) == MAX_LINE and not raw.endswith(b"\n") and (rest := f.readline(MAX_LINE)):
                    raw = raw[:MAX_LINE - 1] + rest[-1:]  # the rest of an overlong line is skipped
                yield lineno, raw
                if lineno % 65536 == 0:
                    progress.update(lineno)
        except (OSError, EOFError, zlib.error) as err:  # a truncated or corrupt .gz
            raise DataError(f"{path}: unreadable after line {lineno} ({err}); is the download complete?") from None
        finally:
            progress.close()


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
    atomic_write_text(path, ITEMS_HEADER + "\n" + "".join(
        f"{g}\t{'X' if g < items.num_x else 'Y'}\t{asin}\t{_one_line(title)}\t{_one_line(url)}\n"
        for g, (asin, (title, url)) in enumerate(zip(items.asins, products))))


def read_titles(scenario_dir: Path, items) -> list:
    """Per item, its title from `<scenario>/items.tsv` (written by `python -m tools.amazon images`), or None."""
    path = scenario_dir / ITEMS_FILE
    if not path.exists():
        raise DataError(f"--missing text reads item titles from {path}, which does not exist. `python -m tools.amazon "
                        f"images` writes it; or use --missing zero to leave image-less rows zero")
    titles = [None] * len(items.asins)
    for number, line in read_text_lines(path):
        fields = line.split("\t")
        if number == 1:
            if line != ITEMS_HEADER:
                raise DataError(f"{path}:1: expected the header {ITEMS_HEADER!r}, found {line[:120]!r}")
            continue
        gid = int(fields[0]) if len(fields) == 5 and NATURAL.fullmatch(fields[0]) else -1
        if not 0 <= gid < len(items.asins) or fields[2] != items.asins[gid] or \
                fields[1] != ("X" if gid < items.num_x else "Y"):
            expected = "global_id, domain, ASIN and title of an item of this scenario's Alist/Blist, tab-separated"
            raise DataError(f"{path}:{number}: expected {expected}; found {line[:120]!r}. Was items.tsv "
                            f"written for another scenario? Rerun `python -m tools.amazon images` for this one")
        titles[gid] = fields[3].strip() or None
    return titles


# ------------------------------------------------ images


def download_images(scenario_dir, meta_paths, *, workers: int = 16, timeout: float = 30.0, retries: int = 3,
                    backoff: float = 1.0, max_bytes: int = 20 << 20, strict: bool = False) -> dict:
    """`python -m tools.amazon images`: writes <scenario>/items.tsv and images/<ASIN>.<ext> for every item whose
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

    settings = dict(timeout=timeout, retries=retries, backoff=backoff, max_bytes=max_bytes)
    counts, failures = download.get_images(items, products, images_dir, workers, settings, IMAGE_SUFFIXES)
    atomic_write_text(images_dir / "failures.tsv", "global_id\tdomain\tasin\treason\timage_url\n" + "".join(
        f"{g}\t{'X' if g < items.num_x else 'Y'}\t{items.asins[g]}\t{_one_line(reason)}\t"
        f"{_one_line(products.get(items.asins[g], ('', ''))[1])}\n" for g, reason in sorted(failures)))
    download.print_outcomes(counts, items.num_items, images_dir)
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
    if isinstance(stamp, str) and not NATURAL.fullmatch(stamp.strip()):
        return None  # ASCII digits only, as in the sequence files
    try:
        ms = int(stamp) * scale
    except (TypeError, ValueError, OverflowError):  # OverflowError: a JSON Infinity or 1e400
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
    """`python -m tools.amazon build`: a C2DSR-format scenario (Alist, Blist, the three sequence files, userlist.txt,
    items.tsv) from two domains' reviews and metadata, by the paper's §4. Everything is written to a temp
    folder that becomes `out` at the end. Returns (and prints) the Table 1 statistics."""
    out = Path(out)
    if out.exists():
        raise DataError(f"{out} already exists; build never overwrites: choose another --out or remove it.")
    if min_count < 1 or min_per_domain < 1 or max_len < 2 * min_per_domain or not 0 < held_out < 1:
        raise DataError(f"expected --min-count >= 1, --min-per-domain >= 1, --max-len >= 2 x --min-per-domain and "
                        f"0 < --held-out < 1; found {min_count}, {min_per_domain}, {max_len}, {held_out}.")
    names, raw_asins, num_x, user, item, ms = _read_both(Path(reviews_a), Path(reviews_b), strict)
    rows = _select(user, item, ms, num_x, min_count=min_count, min_per_domain=min_per_domain, max_len=max_len)
    if len(rows) == 0:
        raise DataError("no user is left after the filters above; lower --min-count or --min-per-domain, or use "
                        "bigger review files.")
    seq = _sequences(rows, user, item, names, raw_asins, num_x)
    splits = _split(ms[rows[seq.ends - 1]], seq.user_id, held_out, seed)
    items = seq.items
    x_meta = read_products([meta_a], set(items.asins[:items.num_x]), strict=strict)
    y_meta = read_products([meta_b], set(items.asins[items.num_x:]), strict=strict)
    products = [(x_meta if g < items.num_x else y_meta).get(a, ("", "")) for g, a in enumerate(items.asins)]
    print(f"metadata: {len(x_meta) + len(y_meta):,} of {items.num_items:,} items found, "
          f"{sum(bool(url) for _, url in products):,} with an image URL", flush=True)

    with atomic_folder(out) as tmp:
        write_item_list(tmp / "Alist.txt", items.asins[:items.num_x], 0)
        write_item_list(tmp / "Blist.txt", items.asins[items.num_x:], items.num_x)
        for split, seqs in splits.items():
            # Note: the files hold unix seconds; 2023 milliseconds are cut, and the lines keep their ms order,
            # which the reader's stable sort preserves for events within one second.
            write_sequences(tmp / SPLIT_FILES[split], (
                (seq.user_id[s], seq.user_id[s],
                 [(seq.gid[item[r]], ms[r] // 1000) for r in rows[seq.starts[s]:seq.ends[s]]])
                for s in seqs[np.argsort(seq.user_id[seqs])]))
        with open(tmp / "userlist.txt", "w", encoding="utf-8") as f:
            f.writelines(f"{names[user[rows[seq.starts[s]]]]}\t{seq.user_id[s]}\n" for s in seq.by_name)
        write_items_tsv(tmp / ITEMS_FILE, items, products)
    print(f"wrote {out}")
    return _statistics(items, splits, seq.ends - seq.starts, item[rows[seq.ends - 1]] < num_x)


def _read_both(reviews_a: Path, reviews_b: Path, strict: bool) -> tuple:
    """Both domains' reviews, Y's only of users who reviewed in X, as arrays over one user and item index
    (X items first). -> (reviewer ids by user index, ASINs by item index, |X|, user, item, ms)."""
    users: dict[str, int] = {}
    print(f"reading domain X reviews {reviews_a}", flush=True)
    asins_x, user_x, item_x, ms_x = _read_domain(reviews_a, users, add_users=True, strict=strict)
    print(f"  {len(user_x):,} reviews by {len(users):,} users of {len(asins_x):,} items", flush=True)
    print(f"reading domain Y reviews {reviews_b}, keeping users who reviewed in X", flush=True)
    asins_y, user_y, item_y, ms_y = _read_domain(reviews_b, users, add_users=False, strict=strict)
    print(f"  {len(user_y):,} reviews of {len(asins_y):,} items", flush=True)
    if len(user_y) == 0:
        raise DataError(f"no reviewer of {reviews_a} appears in {reviews_b}; expected two domains of the same dump "
                        f"(the 2023 dump's user ids differ from the 2014/2018 reviewer ids).")
    num_x = len(asins_x)
    return (list(users), asins_x + asins_y, num_x, np.r_[user_x, user_y], np.r_[item_x, item_y + num_x],
            np.r_[ms_x, ms_y])


class Sequences(NamedTuple):
    """The kept reviews `rows` as one sequence per user, and the ids the scenario's files give them."""
    starts: np.ndarray  # (S,) sequence s is rows[starts[s]:ends[s]], in time order
    ends: np.ndarray  # (S,)
    user_id: np.ndarray  # (S,) each sequence's user id, in the order of the reviewer ids
    by_name: list  # the sequences in the order of their reviewer ids
    items: Items  # the scenario's items: X then Y, each sorted by ASIN
    gid: np.ndarray  # raw item index -> global id (-1 for an item not in the scenario)


def _sequences(rows: np.ndarray, user, item, names: list, raw_asins: list, num_x: int) -> Sequences:
    """One sequence per user from `_select`'s rows (grouped by user, in time order); user ids follow the
    reviewer ids' order."""
    # Note: Alist/Blist hold the items that occur in the written sequences (an item that passed the filter
    # only in cut-off parts of histories is left out), sorted by ASIN; raw_id = global id.
    u = user[rows]
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
    ends = np.r_[starts[1:], len(rows)]
    S = len(starts)
    by_name = sorted(range(S), key=lambda s: names[u[starts[s]]])
    user_id = np.empty(S, np.int64)
    user_id[by_name] = np.arange(S)
    used = np.unique(item[rows])
    kept = sorted(used[used < num_x], key=raw_asins.__getitem__) + \
        sorted(used[used >= num_x], key=raw_asins.__getitem__)
    items = Items([raw_asins[j] for j in kept], int((used < num_x).sum()), int((used >= num_x).sum()))
    gid = np.full(len(raw_asins), -1, np.int64)
    gid[kept] = np.arange(len(kept))
    return Sequences(starts, ends, user_id, by_name, items, gid)


def _split(last: np.ndarray, user_id: np.ndarray, held_out: float, seed: int) -> dict[str, np.ndarray]:
    """The sequences of each split, {"train"|"valid"|"test": (S_split,) sequence indices}, from each sequence's
    last interaction time `last` (S,)."""
    # Note: the paper holds out "the latest interaction sequences" without saying how many; we hold out the share
    # --held-out (0.2) whose last interaction is latest (ties: by user id), and a seeded shuffle deals them into
    # equal valid and test halves. With one sequence per user no user is in two splits, and no training
    # interaction is later than any held-out target (the leak of the π-Net/MIFN splits).
    S = len(last)
    order = np.lexsort((user_id, last))
    n_held = round(S * held_out)
    if n_held < 2 or n_held >= S:
        raise DataError(f"{S} sequences with --held-out {held_out} give {n_held} held-out ones; expected at least "
                        f"2 (one valid, one test) and at least 1 for training.")
    held = np.random.default_rng(seed).permutation(order[S - n_held:])
    return {"train": order[:S - n_held], "valid": held[:n_held // 2], "test": held[n_held // 2:]}


def _statistics(items: Items, splits: dict, lengths: np.ndarray, target_x: np.ndarray) -> dict:
    """Table 1's statistics, printed and returned; `target_x` (S,): whether a sequence's last item is in X."""
    stats = {"items": {"X": items.num_x, "Y": items.num_y}, "train": len(splits["train"]),
             "valid": {"X": int(target_x[splits["valid"]].sum()), "Y": int((~target_x[splits["valid"]]).sum())},
             "test": {"X": int(target_x[splits["test"]].sum()), "Y": int((~target_x[splits["test"]]).sum())},
             "avg_length": float(lengths.mean())}
    print("Table 1 statistics (#valid and #test by the domain of the target, the last item):")
    print(f"{'domain':<8}{'#items':>10}{'#train':>10}{'#valid':>10}{'#test':>10}{'avg.length':>12}")
    print(f"{'X':<8}{items.num_x:>10,}{stats['train']:>10,}{stats['valid']['X']:>10,}{stats['test']['X']:>10,}"
          f"{stats['avg_length']:>12.2f}")
    print(f"{'Y':<8}{items.num_y:>10,}{'-':>10}{stats['valid']['Y']:>10,}{stats['test']['Y']:>10,}")
    return stats


# ------------------------------------------------ command line


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.amazon", description="Raw Amazon data for IFCDSR: item "
                                     "images for a scenario (images) and scenarios built from reviews by the paper's "
                                     "§4 (build).")
    commands = parser.add_subparsers(dest="command", required=True)
    im = commands.add_parser("images", help="items.tsv and images/<ASIN>.<ext> for a scenario, from metadata")
    im.add_argument("--scenario-dir", type=Path, required=True, help="a C2DSR-format folder (Alist.txt, Blist.txt)")
    im.add_argument("--meta", type=Path, nargs="+", required=True,
                    help="metadata files of its domains: 2014, 2018 or 2023 layout, plain or .gz")
    im.add_argument("--workers", type=bounded(int, 1, 256), default=16, help="parallel downloads")
    im.add_argument("--timeout", type=bounded(float, 0.1, 3600), default=30.0,
                    help="seconds allowed for one image request")
    bu = commands.add_parser("build", help="a scenario from two domains' review and metadata files (paper §4)")
    bu.add_argument("--reviews-a", type=Path, required=True, help="reviews of domain X (Alist)")
    bu.add_argument("--reviews-b", type=Path, required=True, help="reviews of domain Y (Blist)")
    bu.add_argument("--meta-a", type=Path, required=True, help="metadata of domain X, for titles and image URLs")
    bu.add_argument("--meta-b", type=Path, required=True, help="metadata of domain Y")
    bu.add_argument("--out", type=Path, required=True, help="the new scenario folder; must not exist")
    bu.add_argument("--min-count", type=bounded(int, 1, 10**6), default=10,
                    help="fewest interactions of a kept user or item (§4: 10)")
    bu.add_argument("--min-per-domain", type=bounded(int, 1, 1000), default=3,
                    help="fewest items of each domain per sequence (§4: 3)")
    bu.add_argument("--max-len", type=bounded(int, 2, 1024), default=15,
                    help="a user's sequence is their latest max-len interactions")
    bu.add_argument("--held-out", type=bounded(float, 0.01, 0.99), default=0.2,
                    help="share of sequences, the latest, for valid + test")
    bu.add_argument("--seed", type=bounded(int, 0, 2**32 - 1), default=0,
                    help="deals the held-out sequences into valid and test")
    for p in (im, bu):
        p.add_argument("--strict", action="store_true", help="a malformed input line is an error (default: skipped)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse has printed what is wrong (or the help)
        return exit_.code
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
    safe_output()
    sys.exit(main())
