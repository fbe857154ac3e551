"""The embed command: a scenario's item images -> `<scenario>/image_embeddings.npy`, E_img (paper §3.1.1).

    python -m tools.embed --scenario-dir data/Food-Kitchen --images data/Food-Kitchen/images

Finds each item's image, decodes and preprocesses it in DataLoader workers, encodes it with
the frozen CLIP of `clip_loader.py`, keeps finished chunks in `<scenario>/image_embeddings.partial/`
so that an interrupted run continues where it stopped, and lists the items without a usable
image in `image_embeddings.missing.tsv` (their rows stay zero, or hold CLIP's text embedding
of their title with --missing text).

Dimension letters: B batch, R image side in pixels, E joint embedding width (the paper's e = 512), N items.
"""
import argparse
import collections
import hashlib
import json
import math
import os
import shutil
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clip_loader import MODELS, CLIPError, file_sha256, load, resolve_device, resolve_weights, tokenize
from clip_loader import check_pixels
from data import DataError, Progress, atomic_write, file_problem, read_items
from tools.amazon import IMAGE_SUFFIXES, read_titles
from train import bounded, safe_output


class ItemImages(torch.utils.data.Dataset):
    """(global id, preprocessed image or zeros, error message or '') for the items that have an image file."""

    def __init__(self, gids, paths, preprocess):
        self.gids, self.paths, self.preprocess = gids, paths, preprocess
        self.resolution = preprocess.transforms[1].size[0]

    def __len__(self):
        return len(self.gids)

    def __getitem__(self, i):
        try:
            with Image.open(self.paths[i]) as image:
                check_pixels(image, self.resolution)  # the resize to R must not allocate more than the limit
                return self.gids[i], self.preprocess(image), ""
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:  # corrupt, truncated, too big
            message = " ".join(str(e).replace(str(self.paths[i]), self.paths[i].name).split()) or type(e).__name__
            return self.gids[i], torch.zeros(3, self.resolution, self.resolution), f"unreadable image: {message}"


def _is_file(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()
    except OSError:  # a symlink loop
        return False


def find_images(images_dir: Path, asins) -> list:
    """Per item, its image `<ASIN>.<jpg|jpeg|png|webp>` (suffix case ignored) or None."""
    found = {}
    for entry in sorted(os.scandir(images_dir), key=lambda e: e.name):
        stem, suffix = os.path.splitext(entry.name)
        if suffix.lower() in IMAGE_SUFFIXES and _is_file(entry):
            rank = IMAGE_SUFFIXES.index(suffix.lower())
            if stem not in found or rank < found[stem][0]:  # Note: .jpg beats .jpeg, .png, .webp
                found[stem] = (rank, Path(entry.path))
    return [found[asin][1] if asin in found else None for asin in asins]


def _default_workers():
    return max(1, min(8, (os.cpu_count() or 2) - 1))  # one core stays with the model


def embed(scenario_dir, images_dir, *, weights="ViT-B/32", batch_size=64, device="auto", missing="zero",
          workers=None, offline=False, chunk_size=4096, after_chunk=None) -> Path:
    """Writes E_img = `<scenario>/image_embeddings.npy`, (N, E) float32, row = global item id, plus
    `image_embeddings.missing.tsv` (id, ASIN, reason, whether the row is zero or from the title)."""
    scenario_dir, images_dir = Path(scenario_dir), Path(images_dir)
    if batch_size < 1:
        raise CLIPError(f"--batch-size must be at least 1, found {batch_size}")
    if workers is not None and workers < 0:
        raise CLIPError(f"--workers must be 0 (decode in the main process) or more, found {workers}")
    if missing not in ("zero", "text"):
        raise CLIPError(f"--missing must be zero or text, found {missing!r}")
    if not images_dir.is_dir():
        raise CLIPError(f"--images {images_dir}: no such folder; it should hold <ASIN>.jpg files")
    items = read_items(scenario_dir)
    N = len(items.asins)
    titles = read_titles(scenario_dir, items) if missing == "text" else None
    paths = find_images(images_dir, items.asins)
    if not any(paths):
        raise CLIPError(f"{images_dir} holds no image named after any of the {N:,} items (looked for <ASIN>"
                        f"{'|'.join(IMAGE_SUFFIXES)}, e.g. {items.asins[0]}.jpg); is --images the right folder?")
    device = resolve_device(device)
    weights_path = resolve_weights(weights, offline=offline)
    model, preprocess = load(weights_path, device)
    partial = scenario_dir / "image_embeddings.partial"
    meta = {"weights_sha256": file_sha256(weights_path), "items": N, "chunk_size": chunk_size,
            "asins_sha256": hashlib.sha256("\n".join(items.asins).encode()).hexdigest()}
    E_img, reasons = _embed_images(model, preprocess, paths, device, partial, meta, batch_size=batch_size,
                                   workers=_default_workers() if workers is None else workers,
                                   after_chunk=after_chunk)

    # Note: rows are the raw encode_image vectors, as the paper's frozen CLIP gives them (no L2
    # normalisation); text rows are raw encode_text vectors, the same treatment.
    row_kind = np.array(["zero" if r else "" for r in reasons], dtype=object)
    if titles is not None:
        fill = [g for g in range(N) if reasons[g] and titles[g]]
        E_img[fill] = embed_texts(model, [f"a photo of {titles[g]}." for g in fill], batch_size, device)
        row_kind[fill] = "text"

    output = scenario_dir / "image_embeddings.npy"
    missing_path = scenario_dir / "image_embeddings.missing.tsv"
    lines = ["global_id\tasin\treason\trow\n"] + [
        f"{g}\t{items.asins[g]}\t{reasons[g]}\t{row_kind[g]}\n" for g in range(N) if reasons[g]]
    atomic_write(output, lambda f: np.save(f, E_img))
    atomic_write(missing_path, lambda f: f.write("".join(lines).encode("utf-8")))
    shutil.rmtree(partial)

    counts = collections.Counter(r.split(":")[0] for r in reasons if r)
    print(f"encoded {N - sum(counts.values()):,} of {N:,} items from images; missing "
          f"{sum(counts.values()):,}: " + (", ".join(f"{k} {v:,}" for k, v in sorted(counts.items())) or "none"))
    if titles is not None:
        print(f"filled {(row_kind == 'text').sum():,} missing rows from titles; {(row_kind == 'zero').sum():,} "
              f"stay zero (no title)")
    print(f"wrote {output} {E_img.shape} float32 and {missing_path}")
    return output


class Chunks:
    """The resumable progress of a run in the folder `partial`, around its E_img (N, E) and reasons (N,).

    Chunk c covers global ids [c·size, (c+1)·size) and is saved as one file once all its images are
    done, so a killed run loses at most one chunk; `after_chunk(c)` runs after each save.
    """

    def __init__(self, partial: Path, meta: dict, paths, E_img, reasons, after_chunk=None):
        self.partial, self.size, self.after_chunk = partial, meta["chunk_size"], after_chunk
        self.E_img, self.reasons = E_img, reasons
        self.count = math.ceil(len(paths) / self.size)
        self._start_or_continue(meta)
        self.pending = [c for c in range(self.count) if not self._read(c)]  # to encode, in order
        self.todo = {c: sum(p is not None for p in paths[self.rows(c)]) for c in self.pending}  # images left

    def rows(self, c: int) -> slice:
        return slice(c * self.size, (c + 1) * self.size)

    def path(self, c: int) -> Path:
        return self.partial / f"chunk_{c:06d}.npz"

    def _start_or_continue(self, meta: dict):
        """Writes meta.json into a new folder, or checks that the run it holds had these weights and items."""
        self.partial.mkdir(exist_ok=True)
        meta_path = self.partial / "meta.json"
        if not meta_path.exists():
            atomic_write(meta_path, lambda f: f.write(json.dumps(meta).encode()))
            return
        try:
            if problem := file_problem(meta_path):  # a FIFO would block the read
                raise OSError(problem)
            saved = json.loads(meta_path.read_text())
        except (OSError, ValueError) as err:
            raise CLIPError(f"{meta_path}: unreadable ({err}); delete {self.partial} to start over") from None
        if saved != meta:
            raise CLIPError(f"{self.partial} holds partial results of a run with other weights or another item "
                            f"list ({saved}); rerun with the same --weights to continue it, or delete the folder "
                            f"to start over")

    def _read(self, c: int) -> bool:
        """Fills chunk c's rows from the file an earlier run saved; False when there is none."""
        chunk = self.path(c)
        if not chunk.exists():
            return False
        problem = file_problem(chunk)  # a FIFO would block np.load
        try:
            if problem:
                raise OSError(problem)
            with np.load(chunk, allow_pickle=False) as saved:
                self.E_img[self.rows(c)], self.reasons[self.rows(c)] = saved["E_img"], saved["reasons"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            why = problem or (f"{type(err).__name__}: {err}" if zipfile.is_zipfile(chunk) else "not a .npz archive")
            raise CLIPError(f"{chunk}: unreadable ({why}); delete it, and rerun to encode its items again") from None
        return True

    def encoded(self, gid: int):
        self.todo[gid // self.size] -= 1

    def save_finished(self):
        """Saves the leading pending chunks whose images are all done."""
        while self.pending and self.todo[self.pending[0]] == 0:
            c = self.pending.pop(0)
            rows = self.rows(c)
            atomic_write(self.path(c),
                         lambda f: np.savez(f, E_img=self.E_img[rows], reasons=self.reasons[rows].astype(str)))
            if self.after_chunk:
                self.after_chunk(c)


def _embed_images(model, preprocess, paths, device, partial: Path, meta, *, batch_size, workers, after_chunk):
    """(E_img (N, E), reason per item: '' when encoded), resumable through the Chunks in the folder `partial`."""
    N = len(paths)
    E_img = np.zeros((N, model.config.embed_dim), dtype=np.float32)  # (N, E)
    # Note: an item without a usable image keeps a zero row (the paper does not say what it does)
    reasons = np.array(["" if p else "no image file" for p in paths], dtype=object)
    chunks = Chunks(partial, meta, paths, E_img, reasons, after_chunk)
    gids = [g for c in chunks.pending for g in range(N)[chunks.rows(c)] if paths[g]]
    loader = torch.utils.data.DataLoader(ItemImages(gids, [paths[g] for g in gids], preprocess),
                                         batch_size=batch_size, num_workers=workers,
                                         pin_memory=device.type == "cuda")
    print(f"embedding {len(gids):,} images of {N:,} items on {device} "
          f"({chunks.count - len(chunks.pending)} of {chunks.count} chunks already done)", file=sys.stderr)
    progress, done = Progress("embed", len(gids), "images"), 0
    chunks.save_finished()
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
        for batch_gids, pixels, errors in loader:  # (B,), (B, 3, R, R), B messages
            ok = torch.tensor([not e for e in errors])  # (B,)
            if ok.any():
                features = model.encode_image(pixels[ok].to(device, non_blocking=True))  # (B_ok, E)
                E_img[batch_gids[ok].numpy()] = features.float().cpu().numpy()
            for g, error in zip(batch_gids.tolist(), errors):
                reasons[g] = error
                chunks.encoded(g)
            done += len(errors)
            chunks.save_finished()
            progress.update(done)
    progress.done(f"{done:,}/{len(gids):,} images in {time.monotonic() - progress.start:.0f} s")
    return E_img, reasons


def embed_texts(model, texts, batch_size, device) -> np.ndarray:
    """(len(texts), E) raw encode_text vectors; texts longer than the context are truncated."""
    rows = []
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
        for start in range(0, len(texts), batch_size):
            tokens = tokenize(texts[start:start + batch_size], model.config.context_length, truncate=True)
            rows.append(model.encode_text(tokens.to(device)).float().cpu().numpy())
    return np.concatenate(rows) if rows else np.zeros((0, model.config.embed_dim), np.float32)


# -------------------------------------------------------------------------------- CLI


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tools.embed", description="encode a scenario's item images into "
                                     "image_embeddings.npy (E_img) with CLIP")
    parser.add_argument("--scenario-dir", type=Path, required=True, help="folder with Alist.txt and Blist.txt")
    parser.add_argument("--images", type=Path, required=True, help="folder of <ASIN>.jpg|jpeg|png|webp files")
    parser.add_argument("--weights", default="ViT-B/32", help="ViT-B/32 (cached in ~/.cache/clip) or a weight file")
    parser.add_argument("--batch-size", type=bounded(int, 1, 4096), default=64)
    parser.add_argument("--device", default="auto", help="auto (cuda when available, else cpu), cpu, cuda or cuda:N")
    parser.add_argument("--missing", choices=("zero", "text"), default="zero",
                        help="rows of items without a usable image: zero (the paper) or the CLIP text embedding of "
                             "'a photo of {title}.' from <scenario-dir>/items.tsv")
    parser.add_argument("--workers", type=bounded(int, 0, 64),
                        help="image decoding processes (default: cores - 1, at most 8)")
    parser.add_argument("--offline", action="store_true", help="never download weights; say where to put them")
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse has printed what is wrong (or the help)
        return exit_.code
    if args.offline and args.weights not in MODELS:
        print(f"error: --offline forbids downloading the weights of a model name, but --weights {args.weights} is "
              f"a file: nothing to download; drop --offline.", file=sys.stderr)
        return 2
    try:
        embed(args.scenario_dir, args.images, weights=args.weights, batch_size=args.batch_size,
              device=args.device, missing=args.missing, workers=args.workers, offline=args.offline)
    except (CLIPError, DataError, OSError) as error:  # OSError: a folder that cannot be written, a full disk
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished chunks are kept in <scenario-dir>/image_embeddings.partial; rerun the same "
              "command to continue", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    safe_output()
    sys.exit(main())
