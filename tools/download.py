"""HTTP downloads of item images for `python -m tools.amazon images`: one image per call, retried when the failure
is transient, checked to decode completely, and saved whole or not at all; every item's, `workers` at a time,
with the count of each outcome."""
from __future__ import annotations

import collections
import contextlib
import http.client
import io
import os
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from PIL import Image

from clip_loader import check_pixels
from data import Progress, atomic_write

SAVED_FORMATS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}  # saved as downloaded; other formats become PNG


class _Failure(Exception):
    """Why an item has no image; the message goes to images/failures.tsv, its part before ':' is counted."""

    def __init__(self, reason: str, *, retry: bool = False, wait: float | None = None):
        super().__init__(reason)
        self.retry, self.wait = retry, wait  # worth another attempt? after the server's Retry-After seconds?


class HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to an http(s) URL (urllib alone also follows ftp://)."""

    def http_error_302(self, req, fp, code, msg, headers):
        target = urllib.parse.urljoin(req.full_url, headers.get("Location") or headers.get("URI") or "")
        if urllib.parse.urlsplit(target).scheme not in ("http", "https"):
            fp.close()
            raise _Failure(f"redirect refused: to {target[:100]}")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


class _Watch:
    """Shuts a download's socket at its deadline: a socket timeout bounds each wait alone, so a server that
    trickles its status line, headers or body a byte at a time would otherwise hold the download for hours."""

    def __init__(self, deadline: float):
        self.deadline, self.fired, self.timer = deadline, False, None

    def arm(self, sock) -> None:
        self.timer = threading.Timer(max(0.0, self.deadline - time.monotonic()), self.shut, (sock,))
        self.timer.daemon = True
        self.timer.start()

    def shut(self, sock) -> None:
        self.fired = True
        with contextlib.suppress(OSError):  # already closed: the download has ended
            sock.shutdown(socket.SHUT_RDWR)  # a blocked read returns at once


_watch = threading.local()  # the _Watch of the download this thread runs (urllib opens in the caller's thread)


class _Armed:
    """A connection that hands its socket to the thread's _Watch as soon as it is connected (each redirect too)."""

    def connect(self):
        super().connect()
        if getattr(_watch, "current", None):
            _watch.current.arm(self.sock)


class _HTTPConnection(_Armed, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_Armed, http.client.HTTPSConnection):
    pass


class _HTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req):
        return self.do_open(_HTTPConnection, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req):
        return self.do_open(_HTTPSConnection, req, context=self._context)


def make_opener() -> urllib.request.OpenerDirector:
    """The opener of every download: http(s) redirects only, each download's deadline kept by its _Watch."""
    return urllib.request.build_opener(HttpOnlyRedirects, _HTTPHandler, _HTTPSHandler)


def _get(opener, url: str, *, timeout: float, max_bytes: int) -> bytes:
    """One GET -> the body, within `timeout` seconds in all however slowly the server sends (with `make_opener()`'s
    handlers): the _Watch shuts the socket at the deadline, and whatever was read by then is a timeout."""
    watch = _watch.current = _Watch(time.monotonic() + timeout)
    try:
        body = _read(opener, url, timeout=timeout, max_bytes=max_bytes)
    except _Failure:
        if not watch.fired:
            raise
        body = None  # the shut socket, seen as a closed connection or a short body
    finally:
        if watch.timer:
            watch.timer.cancel()
        _watch.current = None
    if watch.fired:
        raise _Failure(f"timeout: over {timeout:g} s", retry=True)
    return body


def _read(opener, url: str, *, timeout: float, max_bytes: int) -> bytes:
    """`_get`'s request and its body, read in slices as they arrive; `timeout` bounds each socket wait."""
    request = urllib.request.Request(url, headers={"User-Agent": "IFCDSR-data/1.0 (research; urllib)"})
    try:
        with opener.open(request, timeout=timeout) as response:
            declared = response.headers.get("Content-Length", "")
            if declared.isdecimal() and int(declared) > max_bytes:
                raise _Failure(f"too large: {int(declared):,} bytes, the limit is {max_bytes:,}")
            body = bytearray()
            while True:
                chunk = response.read1(1 << 16)  # what has arrived, at most 64 KiB: a trickle returns byte by byte
                if not chunk:
                    break
                body += chunk
                if len(body) > max_bytes:
                    raise _Failure(f"too large: over {max_bytes:,} bytes")
            if response.length:  # the bytes of Content-Length that never came
                raise _Failure(f"connection error: the body ended {response.length:,} bytes short", retry=True)
            return bytes(body)
    except urllib.error.HTTPError as err:
        err.close()
        wait = err.headers.get("Retry-After", "") if err.headers else ""
        raise _Failure(f"HTTP {err.code}", retry=err.code == 429 or err.code >= 500,
                       wait=float(wait) if wait.strip().isdecimal() else None) from None
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
    # Note: besides 429 and 5xx, timeouts and dropped connections are retried: they are as transient. Other 4xx,
    # non-images and refused redirects are final.
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
            check_pixels(image)
            image.load()  # decodes every pixel: a truncated file fails here rather than in tools/embed.py
            if image.format in SAVED_FORMATS:
                return SAVED_FORMATS[image.format], data
            converted = io.BytesIO()
            image.convert("RGB").save(converted, "PNG")  # e.g. a GIF, whose suffix tools/embed.py does not read
            return ".png", converted.getvalue()
    except Image.UnidentifiedImageError:
        raise _Failure("not an image") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise _Failure(f"corrupt image: {err}") from None


def get_image(asin: str, url: str, no_url: str, files: list[Path], images_dir: Path, opener,
               settings: dict) -> tuple[bool, str]:
    """Makes images/<ASIN>.<ext> a valid image, unless one of its `files` already is one:
    (True, 'downloaded' or 'already present') or (False, the reason; `no_url` when there is no URL)."""
    if not (asin.isascii() and asin.isalnum()):
        return False, "ASIN is not a safe file name"
    odd = [path.name for path in files if not path.is_file()]  # a folder, a broken link, a symlink loop
    if odd:
        return False, f"not a regular file: images/{odd[0]}; remove it, and rerun to fetch the image"
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
    atomic_write(target, lambda f: f.write(data))  # a reader never sees half an image
    for path in stale:
        if path != target:
            path.unlink()  # undecodable, and it would shadow the new file for tools/embed.py
    return True, "downloaded"


def get_images(items, products: dict, images_dir: Path, workers: int, settings: dict, suffixes: tuple) -> tuple:
    """Checks the image on disk (images/<ASIN><suffix>) or fetches it for every item of `items` (data.Items),
    `workers` at a time, with progress lines; `products`: {ASIN: (title, image URL)}.
    -> ({'X': Counter(outcome), 'Y': Counter(outcome)}, [(global id, reason)] of the items without one)."""
    opener = make_opener()
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
            files = [images_dir / f"{asin}{s}" for s in suffixes if f"{asin}{s}" in on_disk]
            if url or files:
                futures[pool.submit(get_image, asin, url, no_url, files, images_dir, opener, settings)] = g
            else:
                record(g, False, no_url)  # nothing to check or fetch
        progress = Progress("images", len(futures), "checked or fetched")
        for done, future in enumerate(as_completed(futures), 1):
            record(futures[future], *future.result())
            progress.update(done, f"{len(failures):,} failed")
        progress.done(progress.line(len(futures), f"{len(failures):,} failed"))
    finally:
        pool.shutdown(cancel_futures=True)  # after Ctrl-C: no new downloads, the running ones finish
    return counts, failures


def print_outcomes(counts: dict, num_items: int, images_dir: Path) -> None:
    """How many items have an image, and the table of outcomes per domain."""
    have = sum(counts[d]["downloaded"] + counts[d]["already present"] for d in counts)
    print(f"{have:,} of {num_items:,} items have an image in {images_dir}")
    outcomes = sorted({o for c in counts.values() for o in c},
                      key=lambda o: (o not in ("downloaded", "already present"), o))
    print(f"{'outcome':<24}{'X':>10}{'Y':>10}")
    for outcome in outcomes:
        print(f"{outcome:<24}{counts['X'][outcome]:>10,}{counts['Y'][outcome]:>10,}")
    print(f"reasons per item: {images_dir / 'failures.tsv'}")


if __name__ == "__main__":
    print("error: tools/download.py is not a command: `python -m tools.amazon images` downloads item images with it "
          "(python -m tools.amazon images --help)", file=sys.stderr)
    sys.exit(2)
