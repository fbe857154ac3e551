"""What the commands share: files written whole or not at all, only regular files read, progress lines with a
rate and an ETA, numeric flags checked against their range, the error of a bad command line, and a hard limit
on the pixels of an image."""
from __future__ import annotations

import argparse
import contextlib
import errno
import os
import shutil
import stat
import sys
import time
from pathlib import Path
from typing import BinaryIO, Callable

from PIL import Image


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """write(file) into a temp file beside `path`, then rename it to `path`: a reader, or a run killed at any
    moment, sees the old file or the new one, never half of one."""
    atomic_write_all({Path(path): write})


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_all(writes: dict[Path, Callable[[BinaryIO], object]]) -> None:
    """Several files, each written into a temp file first; only when all are written whole are they renamed
    into place, one after another: a full disk or an error leaves every old file as it was."""
    tmps = {path: Path(path).with_name(Path(path).name + ".tmp") for path in writes}
    try:
        for path, write in writes.items():
            with open(tmps[path], "wb") as f:
                write(f)
        for path, tmp in tmps.items():
            os.replace(tmp, path)
    finally:
        for tmp in tmps.values():
            tmp.unlink(missing_ok=True)


KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
         (stat.S_ISSOCK, "a socket"))


def file_problem(path: Path) -> str | None:
    """None when `path` is a regular file (after following symlinks); else why it cannot be read as one, for
    a message: 'No such file or directory', 'Is a directory', 'not a regular file but a FIFO', ... A FIFO
    would block the reader for ever and a device like /dev/zero would be read until memory runs out, so
    every command stats a file before it opens it."""
    try:
        mode = os.stat(path).st_mode
    except OSError as err:  # missing, a dangling link, a symlink loop
        return err.strerror or str(err)
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return os.strerror(errno.EISDIR)
    return "not a regular file but " + next((kind for test, kind in KINDS if test(mode)), "a special file")


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


def safe_output() -> None:
    """A terminal or file whose encoding cannot write τ, α or ± (PYTHONIOENCODING=ascii, a C locale) gets
    them as escapes like \\u03c4 instead of ending the command with a UnicodeEncodeError."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


class UsageError(Exception):
    """A bad command line or checkpoint; the message says what to do (train.py prints it and exits with 2)."""


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


def check_pixels(image: Image.Image, short_side: int | None = None) -> None:
    """Pillow's decompression-bomb limit as a hard limit (Pillow only warns between 1x and 2x of it), on the
    image and, with `short_side`, on the image resized to that shorter side: 60000 x 1 pixels pass the first
    test, but resized to CLIP's 224 they would be 13,440,000 x 224, about 9 GB of RGB."""
    w, h = image.width, image.height
    sizes = [(w, h)] + ([(max(w, h) * short_side // max(min(w, h), 1), short_side)] if short_side else [])
    for (width, height), what in zip(sizes, ("", f" once resized to a shorter side of {short_side}")):
        if width * height > Image.MAX_IMAGE_PIXELS:
            raise Image.DecompressionBombError(f"{w} x {h} pixels, {width * height:,}{what}: more than Pillow's "
                                               f"limit of {Image.MAX_IMAGE_PIXELS:,} (a possible decompression bomb)")
