"""Files -> tensors: the C2DSR scenarios (docs/data.md), image embeddings, the generated demo; and what every command
shares about files: written whole or not at all, read only when regular, progress lines. A scenario folder holds
    Alist.txt, Blist.txt     one item a line: raw_id<TAB>ASIN<TAB>local_index
    traindata_new.txt        one user a line: user<TAB>inter_id<TAB>item|unix_ts|date|<TAB>...
    valid/testdata_new.txt   the same; the last item (by time) is the ground truth
    image_embeddings.npy     (N, e) float32 CLIP image embeddings, row = global id
Global ids: domain X (Alist) 0..|X|-1, domain Y (Blist) |X|..N-1; N = |X|+|Y| is the padding id. Shapes: S
sequences, L = max_len positions, left-padded (the most recent item of every view is at position L-1)."""
import contextlib, hashlib, json, os, re, shutil, stat, sys, time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np
import torch


ROOT = Path(__file__).resolve().parent
SCENARIOS = {"food_kitchen": ROOT / "data" / "Food-Kitchen", "movie_book": ROOT / "data" / "Movie-Book"}
SPLIT_FILES = {"train": "traindata_new.txt", "valid": "validdata_new.txt", "test": "testdata_new.txt"}
EMBEDDINGS_FILE = "image_embeddings.npy"
SCENARIO_FILES = ("Alist.txt", "Blist.txt", *SPLIT_FILES.values())
NATURAL = re.compile(r"[0-9]+")  # ids: ASCII digits (not '１２' or '٣')
EVENT = re.compile(r"(?s)\s*([0-9]+)\s*\|\s*(-?[0-9]+)\s*(\|.*)?")  # item|unix_ts|date|..., of a sequence line


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


@dataclass
class Scenario:
    name: str
    path: Path
    items: Items
    train: TrainSet
    valid: EvalSet
    test: EvalSet
    E_img: torch.Tensor | None  # (N, e) frozen image embeddings, or None with --no-image
    data_sha256: str  # identifies the data: the sha256 of the item and sequence files (`fingerprint`)
    images_sha256: str | None  # the sha256 of image_embeddings.npy, when it was read


# ----------------------------------------------------------------------------- reading


def read_text_lines(path: Path) -> list[tuple[int, str]]:
    """The numbered non-blank lines of a UTF-8 text file, at least one; else a DataError naming the file or line."""
    try:
        if problem := file_problem(path):  # a FIFO would block the read, /dev/zero fill memory
            raise OSError(problem)
        raw = path.read_bytes()
        lines = raw.decode("utf-8").split("\n")
    except OSError as err:  # missing, a folder, a symlink loop, a FIFO or a device, no permission
        raise DataError(f"{path}: cannot be read ({err.strerror or err}); expected a text file. A scenario directory "
                        f"needs {', '.join(SCENARIO_FILES)} (docs/data.md says where to get them).") from None
    except UnicodeDecodeError as err:
        lineno, column = raw.count(b"\n", 0, err.start) + 1, err.start - raw.rfind(b"\n", 0, err.start)
        raise DataError(f"{path}:{lineno}: not UTF-8 text (byte {raw[err.start]:#04x} at column {column}); "
                        f"expected a text file, not a compressed or binary one.") from None
    if not (lines := [(lineno, line.rstrip("\r")) for lineno, line in enumerate(lines, 1) if line.strip()]):
        raise DataError(f"{path}: the file is empty; expected at least one line.")
    return lines


def _expected(path: Path, lineno: int, expected: str, found: str) -> DataError:
    return DataError(f"{path}:{lineno}: expected {expected}, found {found[:120]!r}.")


def read_items(scenario_dir: str | Path) -> Items:
    """Alist.txt, then Blist.txt: raw_id<TAB>ASIN<TAB>local_index a line, the local indices 0, 1, 2, ... in order."""
    x, y, first = [], [], {}  # the ASINs of X, of Y; ASIN -> "file:line" (an ASIN names one item, and its image)
    for asins, path in ((x, Path(scenario_dir) / "Alist.txt"), (y, Path(scenario_dir) / "Blist.txt")):
        for lineno, line in read_text_lines(path):
            fields = [f.strip() for f in line.rstrip().split("\t")]  # trailing whitespace, as in the sequence files
            if len(fields) != 3 or not fields[1] or not NATURAL.fullmatch(fields[2]) or int(fields[2]) != len(asins):
                raise _expected(path, lineno, f"'raw_id<TAB>ASIN<TAB>local_index' with an ASIN and the local index "
                                f"{len(asins)} (the lines count 0, 1, 2, ... as C2DSR numbers its items)", line)
            if fields[1] in first:
                raise DataError(f"{path}:{lineno}: ASIN {fields[1]} appears twice (also {first[fields[1]]}); each "
                                f"item needs an ASIN of its own.")
            first[fields[1]] = f"{path.name}:{lineno}"
            asins.append(fields[1])
        if len(asins) < 2:  # a list has at least one line
            raise DataError(f"{path}: domain {'X' if asins is x else 'Y'} has 1 item; a scenario needs at least 2 in "
                            f"each domain (a ground truth and a candidate to rank it against).")
    return Items(x + y, len(x), len(y))


def read_sequences(path: Path, num_items: int) -> list[list[int]]:
    """One list of global item ids per line, sorted stably by unix timestamp."""
    sequences = []
    for lineno, line in read_text_lines(path):
        fields = line.rstrip().split("\t")  # trailing whitespace, as C2DSR's reader strips it
        if len(fields) < 4 or not fields[0].strip() or not fields[1].strip():
            raise _expected(path, lineno, "'user<TAB>inter_id<TAB>item|unix_ts|date|<TAB>...' with a user, an "
                            "interaction id and at least 2 interactions (history + target)", line)
        events = []  # (unix_ts, item)
        for token in fields[2:]:
            if not (event := EVENT.fullmatch(token)) or int(event[1]) >= num_items:
                raise _expected(path, lineno, f"an interaction 'item|unix_ts|date|' with an integer time and an item "
                                f"id in 0..{num_items - 1}, an item of Alist+Blist (the right scenario?)", token)
            events.append((int(event[2]), int(event[1])))
        sequences.append([item for _, item in sorted(events, key=lambda e: e[0])])  # stable: ties keep file order
    return sequences


def read_users(path: Path) -> list[str]:
    """The user column of a sequence file, one per sequence, in the order of `read_sequences`."""
    return [line.split("\t")[0].strip() for _, line in read_text_lines(path)]


def load_image_embeddings(path: Path, num_items: int, name: str | None = None) -> torch.Tensor:
    """(N, e) float32 image embeddings from a .npy file that is never unpickled, with a finite row per item."""
    redo = (f"build it with\n    python -m tools.embed --scenario-dir {path.parent} --images {path.parent / 'images'}\n"
            f"(docs/clip.md), or train the ID-only model with --no-image.")
    try:  # memory-mapped, so that a header that lies about the shape costs nothing; object arrays are refused
        if problem := file_problem(path):  # a FIFO would block the read
            raise OSError(problem)
        E = np.lib.format.open_memmap(path, mode="r")
    except (ValueError, OSError, EOFError) as err:  # missing, garbage, truncated, an object array, a folder
        raise DataError(f"{path}: not a readable .npy array ({err}); {redo}" + fetch_list(name)) from None
    if E.ndim != 2 or E.shape[0] != num_items or E.shape[1] == 0 or not np.issubdtype(E.dtype, np.floating):
        raise DataError(f"{path}: expected shape ({num_items}, e) with e >= 1, one row per item of Alist+Blist, "
                        f"and a float dtype; found shape {E.shape}, dtype {E.dtype}; {redo}")
    with np.errstate(over="ignore"):  # a value beyond float32's range becomes inf, refused below
        E = np.array(E, dtype=np.float32)  # (N, e), read into memory
    if (rows := ~np.isfinite(E).all(axis=1)).any():
        raise DataError(f"{path}: row {int(np.argmax(rows))} (and {int(rows.sum()) - 1} more) has a non-finite value "
                        f"or one beyond float32's range (±3.4e38); expected finite numbers (a zero row: no image).")
    if not E.any():
        raise DataError(f"{path}: every row is zero, so no item has an image and the image branch would add "
                        f"nothing; {redo}")
    return torch.from_numpy(E)


# ----------------------------------------------------------------------------- tensors


def _views(rows: list[list[int]], num_x: int, length: int, pad: int) -> Views:
    """The three views of `rows`, left-padded to (S, length); an item is of domain Y iff its id >= |X|."""
    out = np.full((3, len(rows), length), pad, dtype=np.int64)
    for r, row in enumerate(rows):
        for v, items in enumerate(([i for i in row if i < num_x], [i for i in row if i >= num_x], row)):
            out[v, r, length - len(items):] = items  # no items: an empty slice
    return Views(*torch.from_numpy(out))


def make_train_set(sequences: list[list[int]], num_x: int, max_len: int, pad: int) -> TrainSet:
    """Every next-item position of every view: input view[:-1], target view[1:].
    Note: every next-item position of a training sequence is a target; the paper's Eq. 6 sums over x_t in S^X
    without saying which sequences or positions (C2DSR trains on the last 10 positions of each sequence only)."""
    full = _views([seq[-(max_len + 1):] for seq in sequences], num_x, max_len + 1, pad)  # (S, L+1), left-padded
    # view[:, 1:] is the next item of view[:, :-1]; a view's first item is no target (its input is padding)
    targets = [v[:, 1:].masked_fill(v[:, :-1] == pad, pad) for v in (full.x, full.y, full.xy)]
    return TrainSet(full[:, :-1], Views(*targets))


def item_counts(train: TrainSet, num_items: int) -> torch.Tensor:
    """(N,) how often each item occurs in the training sequences (popularity; 0 = a cold item)."""
    # the inputs plus the last target of each sequence hold every training interaction once
    seen = torch.cat([train.inputs.xy, train.targets.xy[:, -1:]], dim=1)  # (S, L+1)
    return torch.bincount(seen.flatten(), minlength=num_items + 1)[:-1]


def make_eval_set(sequences: list[list[int]], num_x: int, max_len: int, pad: int) -> EvalSet:
    histories = [seq[:-1][-max_len:] for seq in sequences]
    return EvalSet(_views(histories, num_x, max_len, pad), torch.tensor([seq[-1] for seq in sequences]))


def fingerprint(paths: list[Path]) -> str:
    """sha256 over the names and contents of files: what a run and its checkpoints were trained on."""
    parts = (path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest() for path in paths)
    return hashlib.sha256(b"".join(parts)).hexdigest()


def load_scenario(path: str | Path, *, max_len: int, use_images: bool, name: str | None = None) -> Scenario:
    path = Path(path)
    items = read_items(path)
    num_x, pad = items.num_x, items.num_items
    train, valid, test = (read_sequences(path / file, pad) for file in SPLIT_FILES.values())
    E_img = load_image_embeddings(path / EMBEDDINGS_FILE, pad, name) if use_images else None
    return Scenario(name or path.name, path, items, make_train_set(train, num_x, max_len, pad),
                    make_eval_set(valid, num_x, max_len, pad), make_eval_set(test, num_x, max_len, pad), E_img,
                    data_sha256=fingerprint([path / f for f in SCENARIO_FILES]),
                    images_sha256=fingerprint([path / EMBEDDINGS_FILE]) if use_images else None)


def resolve_scenario(name: str | None, data_dir: str | None) -> tuple[str, Path]:
    """--scenario NAME or --data-dir DIR -> (name, directory); generates the demo when asked."""
    if data_dir is not None:
        return Path(data_dir).name, Path(data_dir)
    if name in (None, "demo"):  # one fixed seed: training seeds vary the model, never the data
        return "demo", make_demo(ROOT / "data" / "demo-seed0", seed=0)
    if name not in SCENARIOS:
        raise DataError(f"unknown scenario {name!r}; expected one of demo, {', '.join(SCENARIOS)}, "
                        f"or --data-dir DIR for any C2DSR-format folder.")
    if missing := [f for f in SCENARIO_FILES if not (SCENARIOS[name] / f).exists()]:
        raise DataError(f"{SCENARIOS[name]}: scenario {name} is missing {', '.join(missing)}." + fetch_list(name))
    return name, SCENARIOS[name]


def fetch_list(name: str) -> str:
    """What a named scenario needs, where each file comes from and where it goes ("" for any other name)."""
    categories = {"food_kitchen": ("Grocery_and_Gourmet_Food", "Home_and_Kitchen"),  # of the 2014 Amazon data:
                  "movie_book": ("Movies_and_TV", "Books")}  # McAuley et al., SIGIR 2015; He & McAuley, WWW 2016
    if name not in categories:
        return ""
    folder, meta = SCENARIOS[name], [f"meta_{category}.json.gz" for category in categories[name]]
    return (f"\nScenario {name} needs, in {folder}/:\n"
            f"  1. {', '.join(SCENARIO_FILES)}: the files of the folder {folder.name} of C2DSR's scenarios, the "
            f"Google Drive folder linked from the README of https://github.com/cjx96/C2DSR "
            f"(https://drive.google.com/drive/folders/1xpnp6tH56xz8PF_xuTi9exEptmcvlAVU).\n"
            f"  2. {EMBEDDINGS_FILE}, for the rows with images (--no-image trains without): the 2014 Amazon "
            f"metadata {' and '.join(meta)}, published at http://jmcauley.ucsd.edu/data/amazon/, then\n"
            f"       python -m tools.amazon images --scenario-dir {folder} --meta {' '.join(meta)}\n"
            f"       python -m tools.embed --scenario-dir {folder} --images {folder / 'images'}\n"
            f"     (embed fetches CLIP ViT-B/32's weights, 354 MB, into ~/.cache/clip once, for both scenarios)\n"
            f"docs/data.md (\"From nothing to a scenario\") gives the disk each step needs.")


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
                f"{i}|{t}|{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(t))}|" for i, t in events) + "\n")


# ----------------------------------------------------------------------------- demo scenario


def demo_user(rng: np.random.Generator, domain, category, popularity, style, categories: int, style_dim: int,
              stay: float, style_weight: float, min_len: int, max_len: int) -> list[tuple[int, int]]:
    """One demo user's sequence: (global item id, unix time) in time order, from the user's tastes and style."""
    taste = rng.dirichlet(np.full(categories, 0.3))  # few favourite categories, both domains
    liked_style = rng.normal(size=style_dim)
    liked_style /= np.linalg.norm(liked_style)
    share_x = rng.uniform(0.25, 0.75)
    n = int(rng.integers(min_len, max_len + 1))
    domains = (rng.random(n) >= share_x).astype(int)
    domains[rng.permutation(n)[:6]] = [0, 0, 0, 1, 1, 1]  # at least 3 items of each domain
    current = rng.choice(categories, p=taste)
    seq = []
    for d in domains:
        if rng.random() > stay:
            current = rng.choice(categories, p=taste)
            taste = 0.9 * taste + 0.1 * np.eye(categories)[current]  # tastes drift
        pool = np.flatnonzero((domain == d) & (category == current))
        if len(pool) == 0:
            pool = np.flatnonzero(domain == d)
        w = popularity[pool] * np.exp(style_weight * style[pool] @ liked_style)
        seq.append(int(rng.choice(pool, p=w / w.sum())))
    start = int(rng.integers(1_300_000_000, 1_500_000_000))
    times = start + np.cumsum(rng.integers(3600, 30 * 86400, n))
    return list(zip(seq, times.tolist()))


def make_demo(out: Path, *, seed: int, num_x: int = 1000, num_y: int = 1200, num_users: int = 3000,
              categories: int = 16, style_dim: int = 8, image_dim: int = 64, stay: float = 0.6,
              style_weight: float = 3.0, no_image: float = 0.05, min_len: int = 8, max_len: int = 16) -> Path:
    """Write a deterministic two-domain scenario to `out` (once; a later call with the same arguments reuses it).
    docs/data.md ("The demo scenario") describes the parameters: items per domain (X has more than 999, for the
    sampled protocol), users (one sequence each), categories, style, e = image_dim (CLIP's is 512), strengths."""
    recipe = {name: value for name, value in locals().items() if name != "out"}  # the seed and the sizes
    recipe = json.dumps(recipe, sort_keys=True)
    if (out / "demo.json").is_file() and (out / "demo.json").read_text() == recipe:
        return out
    rng = np.random.default_rng(seed)
    N = num_x + num_y
    domain = np.r_[np.zeros(num_x, int), np.ones(num_y, int)]
    category = rng.integers(0, categories, N)
    popularity = rng.lognormal(0.0, 1.2, N)  # long tail
    style = rng.normal(size=(N, style_dim))
    style /= np.linalg.norm(style, axis=1, keepdims=True)
    # image = category prototype + a projection of the item's style + noise (unnormalised, like CLIP)
    prototypes = rng.normal(size=(categories, image_dim))
    style_proj = rng.normal(size=(style_dim, image_dim))
    E_img = prototypes[category] + 0.8 * style @ style_proj + 0.5 * rng.normal(size=(N, image_dim))
    E_img[rng.random(N) < no_image] = 0.0

    sequences = [demo_user(rng, domain, category, popularity, style, categories, style_dim, stay, style_weight,
                           min_len, max_len) for _ in range(num_users)]
    last_time = [events[-1][1] for events in sequences]

    order = np.argsort(last_time, kind="stable")
    n_train = len(order) - len(order) // 3
    held = order[n_train:]  # the latest sequences: alternately valid and test
    splits = {"train": order[:n_train], "valid": held[0::2], "test": held[1::2]}

    with atomic_folder(out, replace=True) as tmp:  # replaces an earlier, interrupted attempt
        for fname, lo, hi, tag in (("Alist.txt", 0, num_x, "A"), ("Blist.txt", num_x, N, "B")):
            write_item_list(tmp / fname, [f"DEMO{tag}{j:06d}" for j in range(hi - lo)], 10_000 + lo)
        for split, users in splits.items():
            write_sequences(tmp / SPLIT_FILES[split], ((u, u, sequences[u]) for u in users))
        np.save(tmp / EMBEDDINGS_FILE, E_img.astype(np.float32))
        (tmp / "demo.json").write_text(recipe)  # marks a complete scenario
    return out


# ----------------------------------------------------------------------------- files and progress


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """write(file) into `path` by `atomic_write_all`: a reader, or a killed run, sees the old file or the new one."""
    atomic_write_all({Path(path): write})


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_all(writes: dict[Path, Callable[[BinaryIO], object]]) -> None:
    """Writes each file whole beside its path, then renames them all into place: an error leaves the old files."""
    tmps = {path: fresh(Path(path)) for path in writes}
    try:
        for path, write in writes.items():
            with open(tmps[path], "xb") as f:  # "x" (O_EXCL): never a stale temp file, a FIFO or a symlink elsewhere
                write(f)
        for path, tmp in tmps.items():
            os.replace(tmp, path)
    finally:
        for tmp in tmps.values():
            tmp.unlink(missing_ok=True)


def fresh(path: Path) -> Path:
    """A new temp name beside `path` (hidden, ending in .tmp), for a file or folder that becomes `path`."""
    return path.with_name(f".{path.name}.{os.urandom(8).hex()}.tmp")


KINDS = {stat.S_IFREG: None, stat.S_IFDIR: "Is a directory", stat.S_IFIFO: "not a regular file but a FIFO",
         stat.S_IFCHR: "not a regular file but a character device", stat.S_IFSOCK: "not a regular file but a socket",
         stat.S_IFBLK: "not a regular file but a block device"}


def file_problem(path: Path) -> str | None:
    """None when `path` is a regular file (after symlinks), else why not: a FIFO blocks readers, /dev/zero fills RAM."""
    try:
        return KINDS.get(stat.S_IFMT(os.stat(path).st_mode), "not a regular file but a special file")
    except OSError as err:  # missing, a dangling link, a symlink loop
        return err.strerror or str(err)


@contextlib.contextmanager
def atomic_folder(out: Path, *, replace: bool = False):
    """Yields an empty temp folder beside `out` that becomes `out` when the block ends without an error;
    after an error or a kill, `out` is as it was. replace=True lets the new folder replace an old `out`."""
    out = Path(out)
    tmp = fresh(out)  # beside `out`: the rename is atomic
    tmp.mkdir(parents=True)  # not mkdtemp: the folder gets the user's usual permissions, not 0700
    try:
        yield tmp
        if replace and out.exists():
            shutil.rmtree(out)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def duration(seconds: float) -> str:
    """1h02m, 4m10s or 12s."""
    m, s = divmod(max(0, round(seconds)), 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
    """`what: done/total unit, rate unit/s, ETA ...` on stderr: in place on a terminal, else every `every` seconds."""

    def __init__(self, what: str, total: int | None, unit: str, *, every: float = 30.0):
        self.what, self.total, self.unit, self.tty = what, total, unit, sys.stderr.isatty()
        self.every = 0.5 if self.tty else every  # a terminal's line is rewritten at most twice a second
        self.start = self.shown = time.monotonic()  # shown > start: a line was printed

    def line(self, done: int, extra: str = "") -> str:
        rate = done / max(time.monotonic() - self.start, 1e-9)
        total = f"/{self.total:,}" if self.total is not None else ""
        eta = f", ETA {duration((self.total - done) / rate)}" if self.total and 0 < rate and done < self.total else ""
        return f"{self.what}: {done:,}{total} {self.unit}, {rate:,.1f} {self.unit}/s{eta}" + (extra and f", {extra}")

    def update(self, done: int, extra: str = "") -> None:
        if time.monotonic() - self.shown >= self.every:
            self.shown = time.monotonic()
            self.done(self.line(done, extra), end="")

    def done(self, text: str, end: str = "\n") -> None:
        """Prints the job's last line (ending a terminal's status line), or with end="" a terminal's status line."""
        print(f"\r{text}\033[K" if self.tty else text, end=end if self.tty else "\n", file=sys.stderr, flush=True)

    def close(self) -> None:
        """Clears a terminal's status line, so that the next output starts on a clean line."""
        if self.tty and self.shown > self.start:
            self.done("", end="")
