"""Tests of tools/amazon.py and tools/download.py: `python -m tools.amazon images` (metadata -> items.tsv and item images)
and `python -m tools.amazon build` (reviews -> a C2DSR-format scenario by the paper's §4). CPU only; the downloader is
tested against an http.server on 127.0.0.1."""
import collections
import gzip
import io
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from tools import amazon
import data
from data import DataError

ROOT = Path(__file__).resolve().parent.parent  # the project
DAY = 86_400


def write_lines(path: Path, lines, gz: bool = False) -> Path:
    text = "".join(line + "\n" for line in lines).encode("utf-8")
    path.write_bytes(gzip.compress(text) if gz else text)
    return path


def image_bytes(fmt: str, size=(16, 12)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 90)).save(buffer, fmt)
    return buffer.getvalue()


# ----------------------------------------------------------------------------- metadata and review readers


def test_read_products_in_the_three_metadata_layouts(tmp_path, capsys):
    """2014: a Python literal (single quotes, gzipped), not JSON; 2018: imageURLHighRes before the 40-px imageURL;
    2023: parent_asin, and the MAIN picture in its 'large' size although it is listed second. A product listed
    twice keeps its first title and first URL; line 3 is malformed. (items.tsv turns tabs and newlines into
    spaces: see the build and images tests.)"""
    meta_2014 = write_lines(tmp_path / "meta_2014.json.gz", [
        "{'asin': 'A1', 'title': 'Green\\ttea\\n50 bags', 'imUrl': 'http://x/a1.jpg', 'salesRank': {'Food': 5}}",
        "{'asin': 'NOTWANTED', 'title': 'x', 'imUrl': 'http://x/n.jpg'}",
        "{'asin': 'A2', 'title': 'broken",
        "{'asin': 'A2', 'categories': [['Grocery']]}",
        "{'asin': 'A2', 'title': 'Honey', 'imUrl': 'http://x/a2.jpg'}",
    ], gz=True)
    meta_2018 = write_lines(tmp_path / "meta_2018.json", [json.dumps(
        {"asin": "B1", "title": "Pan", "imageURL": ["http://x/small.jpg"], "imageURLHighRes": ["http://x/big.jpg"]})])
    meta_2023 = write_lines(tmp_path / "meta_2023.jsonl", [json.dumps(
        {"parent_asin": "C1", "title": "Pot", "images": [
            {"thumb": "http://x/t1.jpg", "large": "http://x/l1.jpg", "variant": "PT01", "hi_res": None},
            {"thumb": "http://x/t2.jpg", "large": "http://x/l2.jpg", "variant": "MAIN", "hi_res": "http://x/h2.jpg"}]}),
        json.dumps({"parent_asin": "C2", "title": "Lid", "images": []})])
    found = amazon.read_products([meta_2014, meta_2018, meta_2023], {"A1", "A2", "B1", "C1", "C2", "ZZ"})
    assert found == {"A1": ("Green\ttea\n50 bags", "http://x/a1.jpg"), "A2": ("Honey", "http://x/a2.jpg"),
                     "B1": ("Pan", "http://x/big.jpg"), "C1": ("Pot", "http://x/l2.jpg"), "C2": ("Lid", "")}
    err = capsys.readouterr().err
    assert "meta_2014.json.gz: skipped 1 malformed line(s) (first: line 3)" in err
    with pytest.raises(DataError, match=r"meta_2014\.json\.gz:3: expected an Amazon metadata record"):
        amazon.read_products([meta_2014], {"A1"}, strict=True)


def test_read_reviews_in_the_three_layouts_and_a_wrong_file(tmp_path, capsys):
    """Each layout gives (user, item, time in ms): seconds x 1000 for 2014/2018, milliseconds as they are for
    2023. A line of another layout than the file's first review, and a broken one, are skipped and reported."""
    csv_2014 = write_lines(tmp_path / "ratings.csv", ["U1,I1,5.0,1400000000", "U2,I2,4.0", "U2,I3,3.0,1400000100"])
    json_2018 = write_lines(tmp_path / "reviews_2018.json.gz", [
        json.dumps({"reviewerID": "U1", "asin": "I1", "unixReviewTime": 1400000000, "overall": 5.0}),
        json.dumps({"user_id": "U9", "parent_asin": "I9", "timestamp": 1400000000000}),  # a 2023 line: malformed
        "{\"reviewerID\": \"U2\", \"asin\": ",
        json.dumps({"reviewerID": "U2", "asin": "I2", "unixReviewTime": "1400000100"})], gz=True)
    json_2023 = write_lines(tmp_path / "reviews_2023.jsonl", [
        json.dumps({"user_id": "AE1", "asin": "C1-red", "parent_asin": "C1", "timestamp": 1600000000123})])
    assert list(amazon.read_reviews(csv_2014)) == [("U1", "I1", 1400000000000), ("U2", "I3", 1400000100000)]
    assert list(amazon.read_reviews(json_2018)) == [("U1", "I1", 1400000000000), ("U2", "I2", 1400000100000)]
    assert list(amazon.read_reviews(json_2023)) == [("AE1", "C1", 1600000000123)]
    err = capsys.readouterr().err
    assert "ratings.csv: skipped 1 malformed line(s) (first: line 2)" in err
    assert "reviews_2018.json.gz: skipped 2 malformed line(s) (first: line 2, 3)" in err

    meta = write_lines(tmp_path / "meta.json", [json.dumps({"asin": "I1", "title": "t"})] * 3)
    with pytest.raises(DataError, match=r"meta\.json: expected Amazon reviews in one of three layouts.*"
                                        r"found no such line among its first 3 lines"):
        list(amazon.read_reviews(meta))
    with pytest.raises(DataError, match=r"ratings\.csv:2: expected Amazon reviews"):
        list(amazon.read_reviews(csv_2014, strict=True))
    with pytest.raises(DataError, match="file not found"):
        list(amazon.read_reviews(tmp_path / "absent.csv"))


# ----------------------------------------------------------------------------- build: the hand-checkable example

X_CORE = [f"X{j:02d}" for j in range(13)]
Y_CORE = [f"Y{j}" for j in range(6)]
BASE = 1_400_000_000


def example_reviews():
    """Reviews {domain: [(user, item, unix_ts)]}, worked through by hand (defaults 10 / 3 / 15):

    - c00..c11 review X00..X12 and Y0..Y5 (19 reviews each), core user k in the item order X_{k}, X_{k+1}, ...
      (mod 13), with the six Y items after the 5th..10th X item and, for odd k, Y5 moved to the very end. Their
      latest 15 keep 9 X items and all 6 Y items; user k's last review is at BASE + k·DAY + 18·60.
      c00 reviews X00 a second time later: only the first review counts.
    - w reviews X00..X09 and Y0, Y1: 12 reviews but only 2 in Y -> dropped by the 3-per-domain rule.
    - z reviews Y0, Y1, Y2, then X00..X12, then Y3: 4 Y items overall, but the latest 15 hold only Y2 and Y3
      -> dropped (the rule applies to the cut sequence).
    - v reviews XR, XW, X00, X01 and Y0..Y5 (10). XR has 1 review, XW has 10 (c00..c08 and v). Round 1 drops XR;
      round 2 drops v (9 left); round 3 drops XW (9 left); round 4 changes nothing. A single pass keeps v and XW.
    - x_only reviews only X items; y_only only Y items: neither is in both domains.
    Result: users c00..c11, items X00..X12 | Y0..Y5; the latest third (c08..c11) is held out.
    """
    reviews = {"X": [], "Y": []}
    for k in range(12):
        user, t = f"c{k:02d}", BASE + k * DAY
        order = [X_CORE[(k + j) % 13] for j in range(13)]
        sequence = order[:5] + [w for pair in zip(Y_CORE, order[5:11]) for w in pair] + order[11:]
        if k % 2:
            sequence.remove("Y5")
            sequence.append("Y5")
        for j, it in enumerate(sequence):
            reviews[it[0]].append((user, it, t + j * 60))
        if k < 9:
            reviews["X"].append((user, "XW", t - DAY))
    reviews["X"].append(("c00", "X00", BASE + 30 * DAY))  # a repeat, later than everything: ignored
    reviews["X"] += [("w", X_CORE[j], BASE + j * 60) for j in range(10)]
    reviews["Y"] += [("w", "Y0", BASE + 700), ("w", "Y1", BASE + 800)]
    reviews["Y"] += [("z", f"Y{j}", BASE + j * 60) for j in range(3)]
    reviews["X"] += [("z", X_CORE[j], BASE + 200 + j * 60) for j in range(13)]
    reviews["Y"].append(("z", "Y3", BASE + 2000))
    reviews["X"] += [("v", it, BASE + 5 * DAY + j) for j, it in enumerate(["XR", "XW", "X00", "X01"])]
    reviews["Y"] += [("v", it, BASE + 5 * DAY + 10 + j) for j, it in enumerate(Y_CORE)]
    reviews["X"] += [("x_only", it, BASE) for it in X_CORE]
    reviews["Y"] += [("y_only", it, BASE) for it in Y_CORE]
    return reviews


def write_example(folder: Path, layout: str):
    """The example as raw files: domain X reviews gzipped with one malformed line, metadata 2014 (literal) for X
    and 2023 (gzipped) for Y."""
    folder.mkdir(parents=True, exist_ok=True)
    reviews = example_reviews()

    def line(user, item, ts):
        if layout == "2014 csv":
            return f"{user},{item},5.0,{ts}"
        if layout == "2018 json":
            return json.dumps({"reviewerID": user, "asin": item, "unixReviewTime": ts, "overall": 5.0})
        return json.dumps({"user_id": user, "parent_asin": item, "timestamp": ts * 1000 + 7, "rating": 5.0})

    ra = write_lines(folder / "reviews_x.gz", [line(*r) for r in reviews["X"][:5]] + ["{not a review"]
                     + [line(*r) for r in reviews["X"][5:]], gz=True)
    rb = write_lines(folder / "reviews_y", [line(*r) for r in reviews["Y"]])
    ma = write_lines(folder / "meta_x", [repr({"asin": it, "title": f"food {it}", "imUrl": f"http://img/{it}.jpg"})
                                         for it in X_CORE])
    mb = write_lines(folder / "meta_y.gz", [json.dumps({"parent_asin": it, "title": f"kitchen\t{it}", "images": []})
                                            for it in Y_CORE[:5]], gz=True)
    return ra, rb, ma, mb


def read_split(path: Path):
    """[(user, [(item, ts), ...] in time order)] of a sequence file."""
    rows = []
    for line in path.read_text().splitlines():
        user, _, *events = line.split("\t")
        rows.append((user, sorted(((int(e.split("|")[0]), int(e.split("|")[1])) for e in events),
                                  key=lambda e: e[1])))
    return rows


def test_build_filters_and_splits_the_hand_example(tmp_path, capsys):
    ra, rb, ma, mb = write_example(tmp_path / "raw", "2018 json")
    out = tmp_path / "FK"
    stats = amazon.build_scenario(ra, rb, ma, mb, out, held_out=1 / 3, seed=0)
    printed = capsys.readouterr()
    assert "stable after 4 round(s)" in printed.out  # the iterated filter: XR, then v, then XW
    assert "reviews_x.gz: skipped 1 malformed line(s) (first: line 6)" in printed.err

    items = data.read_items(out)
    assert items.asins == X_CORE + Y_CORE and (items.num_x, items.num_y) == (13, 6)  # no XR, XW; sorted by ASIN
    users = dict(line.split("\t") for line in (out / "userlist.txt").read_text().splitlines())
    assert sorted(users) == [f"c{k:02d}" for k in range(12)]  # v (cascade), w (2 Y), z (cut), x_only, y_only out
    splits = {s: read_split(out / f) for s, f in data.SPLIT_FILES.items()}
    name = {index: user for user, index in users.items()}
    held = {name[u] for s in ("valid", "test") for u, _ in splits[s]}
    assert held == {"c08", "c09", "c10", "c11"} and len(splits["valid"]) == len(splits["test"]) == 2

    for split, rows in splits.items():
        for user, events in rows:
            seq = [i for i, _ in events]
            assert len(seq) == 15 and len(set(seq)) == 15, (split, user)  # cut to 15, no repeated item
            assert sum(i < 13 for i in seq) == 9 and sum(i >= 13 for i in seq) == 6  # 9 X, all 6 Y
            k = int(name[user][1:])
            assert events[-1][1] == BASE + k * DAY + 18 * 60  # the latest review is the last item
            assert seq[-1] == (items.asins.index("Y5") if k % 2 else items.asins.index(X_CORE[(k + 12) % 13]))
    assert stats == {"items": {"X": 13, "Y": 6}, "train": 8, "avg_length": 15.0,
                     "valid": {"X": sum(int(name[u][1:]) % 2 == 0 for u, _ in splits["valid"]),
                               "Y": sum(int(name[u][1:]) % 2 == 1 for u, _ in splits["valid"])},
                     "test": {"X": sum(int(name[u][1:]) % 2 == 0 for u, _ in splits["test"]),
                              "Y": sum(int(name[u][1:]) % 2 == 1 for u, _ in splits["test"])}}
    assert "Table 1 statistics" in printed.out and "15.00" in printed.out

    tsv = (out / "items.tsv").read_text(encoding="utf-8").splitlines()
    assert tsv[0] == "global_id\tdomain\tasin\ttitle\timage_url" and len(tsv) == 1 + 19
    assert tsv[1] == "0\tX\tX00\tfood X00\thttp://img/X00.jpg"
    assert tsv[14] == "13\tY\tY0\tkitchen Y0\t" and tsv[19] == "18\tY\tY5\t\t"  # Y5 has no metadata

    titles = amazon.read_titles(out, items)  # what `tools/embed.py --missing text` reads
    assert titles[0] == "food X00" and titles[13] == "kitchen Y0" and titles[18] is None
    scenario = data.load_scenario(out, max_len=15, use_images=False)
    assert (len(scenario.train), len(scenario.valid), len(scenario.test)) == (8, 2, 2)
    assert not list(tmp_path.glob(".FK.*"))  # the temp folder became FK


def test_build_output_has_no_leak_and_is_deterministic(tmp_path):
    """Over every line of the output: no user in two splits, every held-out target is its line's latest
    interaction, and no training interaction is later than any held-out target."""
    raw = write_example(tmp_path / "raw", "2014 csv")
    amazon.build_scenario(*raw, tmp_path / "a", held_out=1 / 3, seed=5)
    splits = {s: read_split(tmp_path / "a" / f) for s, f in data.SPLIT_FILES.items()}
    users = {s: [u for u, _ in rows] for s, rows in splits.items()}
    assert sum(map(len, users.values())) == len(set().union(*map(set, users.values()))) == 12
    targets = [events[-1][1] for s in ("valid", "test") for _, events in splits[s]]
    for s in ("valid", "test"):
        for _, events in splits[s]:
            assert events[-1][1] > max(t for _, t in events[:-1])
    assert max(t for _, events in splits["train"] for _, t in events) <= min(targets)

    amazon.build_scenario(*raw, tmp_path / "b", held_out=1 / 3, seed=5)
    amazon.build_scenario(*raw, tmp_path / "c", held_out=1 / 3, seed=6)
    files = ["Alist.txt", "Blist.txt", "userlist.txt", "items.tsv", *data.SPLIT_FILES.values()]
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)

    def held(d):
        return sorted((tmp_path / d / "validdata_new.txt").read_text().splitlines()
                      + (tmp_path / d / "testdata_new.txt").read_text().splitlines())
    assert held("a") == held("c")  # another seed deals the same held-out sequences into valid and test ...
    assert (tmp_path / "a" / "validdata_new.txt").read_text() != (tmp_path / "c" / "validdata_new.txt").read_text()


def test_build_gives_the_same_scenario_from_2023_reviews(tmp_path):
    """The same reviews in the 2023 layout (ms timestamps, parent_asin) give the same items and sequences."""
    amazon.build_scenario(*write_example(tmp_path / "r18", "2018 json"), tmp_path / "s18", held_out=1 / 3)
    amazon.build_scenario(*write_example(tmp_path / "r23", "2023 json"), tmp_path / "s23", held_out=1 / 3)
    for f in ["Alist.txt", "Blist.txt", "userlist.txt", *data.SPLIT_FILES.values()]:
        assert (tmp_path / "s18" / f).read_text() == (tmp_path / "s23" / f).read_text(), f


def test_build_errors_are_clear_and_never_destroy_output(tmp_path, capsys):
    ra, rb, ma, mb = write_example(tmp_path / "raw", "2018 json")
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert amazon.main(["build", "--reviews-a", str(ra), "--reviews-b", str(rb), "--meta-a", str(ma),
                      "--meta-b", str(mb), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and (out / "keep.txt").read_text() == "mine"

    lonely = write_lines(tmp_path / "other_users.csv", ["Q1,Y0,5.0,1400000000"])
    with pytest.raises(DataError, match="no reviewer of .* appears in"):
        amazon.build_scenario(ra, lonely, ma, mb, tmp_path / "o1")
    with pytest.raises(DataError, match="no user is left after the filters"):
        amazon.build_scenario(ra, rb, ma, mb, tmp_path / "o2", min_count=100)
    with pytest.raises(DataError, match="expected --min-count >= 1"):
        amazon.build_scenario(ra, rb, ma, mb, tmp_path / "o3", max_len=5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists", "other_users.csv", "raw"]  # nothing half-written

    result = subprocess.run([sys.executable, "-m", "tools.amazon", "build", "--reviews-a", str(tmp_path / "no.csv"),
                             "--reviews-b", str(rb), "--meta-a", str(ma), "--meta-b", str(mb),
                             "--out", str(tmp_path / "o4")], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert "no.csv: file not found" in result.stderr


# ----------------------------------------------------------------------------- images: a local server


class ImageServer:
    """http.server on 127.0.0.1 serving fixed routes; counts the requests per path."""

    def __init__(self, routes):
        self.routes, self.hits, self.lock = routes, collections.Counter(), threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                with server.lock:
                    server.hits[self.path] += 1
                    hit = server.hits[self.path]
                status, headers, body, delay = server.routes[self.path](hit) if self.path in server.routes \
                    else (404, {}, b"not found", 0)
                time.sleep(delay)
                try:
                    self.send_response(status)
                    for key, value in {"Content-Length": str(len(body)), **headers}.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    pass

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    jpeg, png, gif = image_bytes("JPEG"), image_bytes("PNG"), image_bytes("GIF")
    ok = lambda body, kind: lambda hit: (200, {"Content-Type": kind}, body, 0)
    routes = {
        "/a.jpg": ok(jpeg, "image/jpeg"),
        "/b.png": ok(png, "image/png"),
        "/c.gif": ok(gif, "image/gif"),
        "/slow.jpg": lambda hit: (200, {}, jpeg, 1.0),
        "/truncated.jpg": ok(jpeg[: len(jpeg) // 2], "image/jpeg"),
        "/page.html": ok(b"<html><body>Sorry, we just need to make sure you're not a robot.</body></html>",
                         "text/html"),
        "/to-ftp": lambda hit: (302, {"Location": "ftp://127.0.0.1/a.jpg"}, b"", 0),
        "/to-http": lambda hit: (302, {"Location": "/b.png"}, b"", 0),
        "/flaky.jpg": lambda hit: (503, {}, b"busy", 0) if hit == 1 else (200, {}, jpeg, 0),
        "/busy.jpg": lambda hit: (429, {"Retry-After": "0"}, b"slow down", 0) if hit == 1 else (200, {}, jpeg, 0),
        "/huge.jpg": ok(jpeg + b"\0" * 5000, "image/jpeg"),
    }
    s = ImageServer(routes)
    yield s
    s.close()


def make_image_scenario(folder: Path, url: str) -> Path:
    """X items A1..A8 with 2014 metadata (Python literals), Y items B1..B7 with 2023 metadata (gzipped); B6 is
    in neither metadata file."""
    folder.mkdir()
    x = {"A1": "/a.jpg", "A2": "/missing.jpg", "A3": "/slow.jpg", "A4": "/truncated.jpg", "A5": "/page.html",
         "A6": "/to-ftp", "A7": None, "A8": "file:///etc/passwd"}
    y = {"B1": "/b.png", "B2": "/c.gif", "B3": "/flaky.jpg", "B4": "/to-http", "B5": "/huge.jpg", "B7": "/busy.jpg"}
    data.write_item_list(folder / "Alist.txt", list(x), 100)
    data.write_item_list(folder / "Blist.txt", ["B1", "B2", "B3", "B4", "B5", "B6", "B7"], 200)
    full = {a: p if p is None or not p.startswith("/") else url + p for a, p in {**x, **y}.items()}
    write_lines(folder / "meta_x", [repr({"asin": a, "title": f"item\t{a}", **({"imUrl": full[a]} if p else {})})
                                    for a, p in x.items()] + ["{'asin': 'A9', 'title': 'not in the scenario'}"])
    write_lines(folder / "meta_y.gz", [json.dumps({"parent_asin": b, "title": f"pan {b}", "images": [
        {"thumb": url + "/thumb.jpg", "large": full[b], "variant": "MAIN"}]}) for b in y], gz=True)
    return folder


def failures(folder: Path) -> dict:
    lines = (folder / "images" / "failures.tsv").read_text().splitlines()
    assert lines[0] == "global_id\tdomain\tasin\treason\timage_url"
    return {line.split("\t")[2]: line.split("\t")[3] for line in lines[1:]}


def test_images_downloads_checks_and_reports(tmp_path, server, capsys):
    folder = make_image_scenario(tmp_path / "S", server.url)
    counts = amazon.download_images(folder, [folder / "meta_x", folder / "meta_y.gz"], workers=4, timeout=0.3,
                                  retries=1, backoff=0.01, max_bytes=4000)
    images = folder / "images"
    saved = sorted(p.name for p in images.iterdir() if p.name != "failures.tsv")
    assert saved == ["A1.jpg", "B1.png", "B2.png", "B3.jpg", "B4.png", "B7.jpg"]  # the GIF is re-encoded as PNG
    for name in saved:
        with Image.open(images / name) as im:
            im.load()
            assert im.size == (16, 12)
    reasons = failures(folder)
    assert reasons["A2"] == "HTTP 404"
    assert reasons["A3"] == "timeout: over 0.3 s"
    assert reasons["A4"].startswith("corrupt image: ")  # Pillow's words for a truncated JPEG vary
    assert reasons["A5"] == "not an image"
    assert reasons["A6"] == "redirect refused: to ftp://127.0.0.1/a.jpg"
    assert reasons["A7"] == "no image URL" and reasons["B6"] == "not in metadata"
    assert reasons["A8"] == "not an http(s) URL: file:///etc/passwd"
    assert reasons["B5"].startswith("too large: ") and len(reasons) == 9
    assert counts["X"] == {"downloaded": 1, "HTTP 404": 1, "timeout": 1, "corrupt image": 1, "not an image": 1,
                           "redirect refused": 1, "no image URL": 1, "not an http(s) URL": 1}
    assert counts["Y"] == {"downloaded": 5, "too large": 1, "not in metadata": 1}
    # 503 and 429 are retried, 404 is not, a timeout is retried (retries=1: two attempts)
    assert [server.hits[p] for p in ("/flaky.jpg", "/busy.jpg", "/missing.jpg", "/slow.jpg")] == [2, 2, 1, 2]
    assert "/thumb.jpg" not in server.hits  # the 'large' size of the MAIN picture is the one fetched

    tsv = (folder / "items.tsv").read_text().splitlines()
    assert tsv[0] == "global_id\tdomain\tasin\ttitle\timage_url" and len(tsv) == 1 + 15
    assert tsv[1] == f"0\tX\tA1\titem A1\t{server.url}/a.jpg" and tsv[7] == "6\tX\tA7\titem A7\t"
    assert tsv[14] == "13\tY\tB6\t\t"
    assert amazon.read_titles(folder, data.read_items(folder))[:2] == ["item A1", "item A2"]
    printed = capsys.readouterr()
    assert "images: 13/13 checked or fetched" in printed.err and "9 failed" in printed.err
    assert "6 of 15 items have an image" in printed.out


def test_images_rerun_fetches_only_what_is_missing(tmp_path, server, capsys):
    """After an interrupted run (A1 never arrived, B2's file is half written, a stale temp file), a rerun
    requests only those two images (and retries the failures), and keeps the rest, the stale temp file too
    (its own temp files have new names)."""
    folder = make_image_scenario(tmp_path / "S", server.url)
    metas = [folder / "meta_x", folder / "meta_y.gz"]
    amazon.download_images(folder, metas, workers=4, timeout=0.3, retries=1, backoff=0.01, max_bytes=4000)
    images = folder / "images"
    (images / "A1.jpg").unlink()
    (images / "B2.png").write_bytes((images / "B2.png").read_bytes()[:40])
    stale = images / ".A1.jpg.0123456789abcdef.tmp"  # a temp file of a killed download: never reused
    stale.write_bytes(b"partial")
    kept = (images / "B1.png").stat().st_mtime_ns
    server.hits.clear()
    counts = amazon.download_images(folder, metas, workers=4, timeout=0.3, retries=1, backoff=0.01, max_bytes=4000)
    assert server.hits["/a.jpg"] == 1 and server.hits["/c.gif"] == 1
    assert all(server.hits[p] == 0 for p in ("/b.png", "/flaky.jpg", "/to-http", "/busy.jpg"))
    assert server.hits["/missing.jpg"] == 1  # failures are tried again
    assert counts["X"]["downloaded"] == 1 and counts["Y"] == {"downloaded": 1, "already present": 4, "too large": 1,
                                                              "not in metadata": 1}
    assert (images / "B1.png").stat().st_mtime_ns == kept and list(images.glob("*.tmp")) == [stale]
    with Image.open(images / "B2.png") as im:
        im.load()


@pytest.mark.parametrize("part", ["headers", "body"])
def test_a_download_ends_at_its_deadline_however_slowly_the_server_trickles(part):
    """The server sends one byte every 0.25 s (for at most 10 s), of its status line and headers or of a
    1,000-byte body after them: with a 1 s timeout the download ends after about 1 s as a timeout, not when
    the server gives up."""
    from tools import download
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n" + b"X-Pad: " + b"p" * 60 + b"\r\n\r\n"

    class Trickle(BaseHTTPRequestHandler):
        def do_GET(self):
            if part == "body":
                self.wfile.write(head)
            try:
                for byte in (head if part == "headers" else b"x" * 40)[:40]:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.25)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up: the server's thread ends
                pass

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        start = time.monotonic()
        with pytest.raises(download._Failure, match=r"^timeout: over 1 s$"):
            download.fetch(download.make_opener(), f"http://127.0.0.1:{httpd.server_address[1]}/slow.jpg",
                           timeout=1, retries=0, backoff=0, max_bytes=4000)
        assert time.monotonic() - start < 6  # the server trickles for 10 s
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_body_shorter_than_its_content_length_is_a_connection_error(server):
    from tools import download
    server.routes["/short.jpg"] = lambda hit: (200, {"Content-Length": "5000"}, image_bytes("JPEG"), 0)
    with pytest.raises(download._Failure, match=r"^connection error: the body ended [\d,]+ bytes short$"):
        download.fetch(download.make_opener(), server.url + "/short.jpg", timeout=5, retries=0, backoff=0,
                       max_bytes=10_000)


def test_download_is_no_command_and_says_which_one_uses_it():
    result = subprocess.run([sys.executable, "-m", "tools.download", "--help"], capture_output=True, text=True,
                            timeout=120, cwd=ROOT)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == ("error: tools/download.py is not a command: `python -m tools.amazon images` downloads "
                             "item images with it (python -m tools.amazon images --help)\n")


def test_images_cli_errors(tmp_path, capsys):
    assert amazon.main(["images", "--scenario-dir", str(tmp_path), "--meta", str(tmp_path / "m")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'Alist.txt'}: cannot be read (No such file")
    folder = make_image_scenario(tmp_path / "S", "http://127.0.0.1:9")
    other = write_lines(tmp_path / "other_meta", [json.dumps({"asin": "Q1", "title": "t"})])
    assert amazon.main(["images", "--scenario-dir", str(folder), "--meta", str(other)]) == 2
    assert "none of the 15 ASINs" in capsys.readouterr().err
    assert not (folder / "images").exists()


REAL = ROOT.parent / "shared" / "data" / "c2dsr" / "Food-Kitchen"


@pytest.mark.skipif(not (REAL / "Alist.txt").is_file(), reason="needs ../shared/data (the C2DSR Food-Kitchen lists)")
def test_images_on_the_real_food_kitchen_item_lists(tmp_path, server, capsys):
    """All 64,093 items of the real scenario: items.tsv has one row per item in global id order (as tools/embed.py
    reads it), the three items in the 2014 metadata get their image, the others 'not in metadata'."""
    folder = tmp_path / "Food-Kitchen"
    folder.mkdir()
    for name in ("Alist.txt", "Blist.txt"):
        (folder / name).write_bytes((REAL / name).read_bytes())
    items = data.read_items(folder)
    picked = {items.asins[0]: "/a.jpg", items.asins[items.num_x - 1]: "/b.png", items.asins[-1]: "/c.gif"}
    meta = write_lines(tmp_path / "meta.json.gz", [repr({"asin": a, "title": f"real {a}", "imUrl": server.url + p})
                                                    for a, p in picked.items()], gz=True)
    counts = amazon.download_images(folder, [meta], workers=8, timeout=5)
    assert counts["X"] == {"downloaded": 2, "not in metadata": items.num_x - 2}
    assert counts["Y"] == {"downloaded": 1, "not in metadata": items.num_y - 1}
    titles = amazon.read_titles(folder, items)
    assert titles[0] == f"real {items.asins[0]}" and titles[-1] == f"real {items.asins[-1]}"
    assert sum(t is not None for t in titles) == 3 and len(titles) == 64_093
    assert sorted(p.name for p in (folder / "images").glob("*.*g")) == sorted(
        [f"{items.asins[0]}.jpg", f"{items.asins[items.num_x - 1]}.png", f"{items.asins[-1]}.png"])
