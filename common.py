"""What the commands share: files written whole or not at all, progress lines with a rate and an ETA, numeric
flags checked against their range, and a hard limit on the pixels of an image."""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import time
from pathlib import Path
from typing import BinaryIO, Callable

from PIL import Image


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """write(file) into a temp file beside `path`, then rename it to `path`: a reader, or a run killed at any
    moment, sees the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


@contextlib.contextmanager
def atomic_folder(out: Path, *, replace: bool = False):
    """Yields an empty temp folder beside `out` that becomes `out` when the block ends without an error;
    after an error or a kill, `out` is as it was. replace=True lets the new folder replace an old `out`."""
    out = Path(out)
    tmp = out.parent / f".{out.name}.{os.getpid()}.tmp"  # beside `out`: the rename is atomic
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed run that had the same process id
    tmp.mkdir(parents=True)  # not mkdtemp: the folder gets the user's usual permissions, not 0700
    try:
        yield tmp
        if replace and out.exists():
            shutil.rmtree(out)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bounded(kind: type, low: int | float, high: int | float) -> Callable[[str], int | float]:
    """An argparse type: a finite int or float in [low, high]. Anything else (nan, inf, out of range, not a
    number) stops the command before any work, with exit code 2 and a message that gives the range."""
    what = f"an integer in [{low:,}, {high:,}]" if kind is int else f"a number in [{low:g}, {high:g}]"

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:  # False for nan
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


def moved(old: str, new: str) -> int:
    """An old command spelling: one line that gives the new one, and exit code 2."""
    print(f"error: `{old}` is now `{new}`", file=sys.stderr)
    return 2


def duration(seconds: float) -> str:
    """1h02m, 4m10s or 12s."""
    seconds = max(0, round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    """A status line of a long job on stderr, `what: done/total unit, rate unit/s, ETA ...`: rewritten in
    place on a terminal (at most twice a second), else a new line every `every` seconds."""

    def __init__(self, what: str, total: int | None, unit: str, *, every: float = 30.0):
        self.what, self.total, self.unit = what, total, unit
        self.tty = sys.stderr.isatty()
        self.every = 0.5 if self.tty else every
        self.start = self.shown = time.monotonic()
        self.open = False  # a terminal line waits to be cleared

    def line(self, done: int, extra: str = "") -> str:
        rate = done / max(time.monotonic() - self.start, 1e-9)
        text = f"{self.what}: {done:,}" + (f"/{self.total:,}" if self.total is not None else "") + \
            f" {self.unit}, {rate:,.1f} {self.unit}/s"
        if self.total is not None and 0 < rate and done < self.total:
            text += f", ETA {duration((self.total - done) / rate)}"
        return text + (f", {extra}" if extra else "")

    def update(self, done: int, extra: str = "") -> None:
        now = time.monotonic()
        if now - self.shown >= self.every:
            self.shown = now
            self._print(self.line(done, extra))

    def done(self, text: str) -> None:
        """The job's last line, printed always (and ending a terminal's status line)."""
        self._print(text, final=True)

    def close(self) -> None:
        """Clears a terminal's status line, so that the next output starts on a clean line."""
        if self.open:
            print("\r\033[K", end="", file=sys.stderr, flush=True)
            self.open = False

    def _print(self, text: str, final: bool = False) -> None:
        if self.tty:
            print(f"\r{text}\033[K", end="\n" if final else "", file=sys.stderr, flush=True)
            self.open = not final
        else:
            print(text, file=sys.stderr, flush=True)


def check_pixels(image: Image.Image) -> None:
    """Pillow's decompression-bomb limit as a hard limit: Pillow only warns between 1x and 2x of it."""
    if image.width * image.height > Image.MAX_IMAGE_PIXELS:
        raise Image.DecompressionBombError(f"{image.width} x {image.height} pixels, more than Pillow's limit of "
                                           f"{Image.MAX_IMAGE_PIXELS:,}: a possible decompression bomb")
