"""The run folder: where a run writes, one process at a time, what a --resume checks in it first, the results
written last, whole, and the Ctrl-C message that gives the command continuing it."""
from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import struct
import time
from pathlib import Path

import numpy as np

from checkpoints import check_checkpoint, check_same_run, load_checkpoint
from common import UsageError, atomic_write_all, file_problem
from data import Scenario
from ifcdsr import Config

LOCK = ".lock"  # in every run folder: locked by the process that writes the folder, never read or written


def save_run(out: Path, results: dict, ranks: dict) -> None:
    """results.json and test_ranks.npz of a complete run (`ranks`: its arrays by npz key, `report.npz_ranks`),
    both written whole before either replaces an earlier pair: a failed or interrupted run leaves the previous
    files as they were."""
    text = json.dumps(results, indent=1, allow_nan=False)  # strict JSON: a NaN or an infinity is an error
    atomic_write_all({out / "results.json": lambda f: f.write(text.encode("utf-8")),
                      out / "test_ranks.npz": lambda f: np.savez(f, **ranks)})


def output_folder(out: str | None, name: str, resume: bool) -> Path:
    """--out, or runs/<name>-<time> (with --resume, the latest such folder)."""
    if out is None and resume:  # runs/<name>-YYYYmmdd-HHMMSS of exactly this scenario name
        stamped = re.compile(re.escape(name) + r"-\d{8}-\d{6}")
        found = sorted(p for p in Path("runs").glob(f"{name}-*") if stamped.fullmatch(p.name))
        if not found:
            raise UsageError(f"--resume: no earlier run of {name} under runs/; pass --out DIR.")
        return found[-1]
    out = Path(out or f"runs/{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    if out.is_symlink() and not out.exists():
        raise UsageError(f"--out {out}: a symlink to {os.readlink(out)}, which does not exist; choose another --out.")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: is a file, not a folder; choose another --out.")
    if not resume and holds_a_run(out):
        raise UsageError(f"{out} already holds a run; pass --resume to continue it, or another --out.")
    return out


def holds_a_run(out: Path) -> bool:
    return out.is_dir() and any(p.name != LOCK for p in out.iterdir())


def lock_run_folder(out: Path, resume: bool):
    """An exclusive lock on the run folder `out` (created if need be), held by the returned open file: a second
    train.py into the same folder is refused at once, naming the holder. The kernel drops the lock when the
    holder ends, however it ends, so the lock of a killed run never blocks. Without --resume the folder must
    still hold nothing but the lock file: another run may have filled it since `output_folder` looked."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK
    problem = "a symlink" if path.is_symlink() else path.exists() and file_problem(path)
    if problem:  # opening a FIFO to write would block; a symlink could point anywhere
        raise UsageError(f"{path}: {problem}, not the run's lock file; delete it and run again.")
    lock = open(path, "ab")  # created once, never written: a finished run's files stay as they were
    try:
        fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        query = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)  # struct flock: type, whence, start,
        pid = struct.unpack("hhqqi4x", fcntl.fcntl(lock, fcntl.F_GETLK, query))[4]  # length, pid of the holder
        lock.close()
        raise UsageError(f"{out}: another train.py (process {pid}) is writing this run folder; wait until it ends "
                         f"(or stop it), or choose another --out.") from None
    if not resume and holds_a_run(out):
        lock.close()
        raise UsageError(f"{out} already holds a run; pass --resume to continue it, or another --out.")
    return lock


def check_run_folder(out: Path, scen: Scenario, planned: dict[Path, tuple[str, Config]]) -> None:
    """Before --resume writes anything: the run folder's results and every checkpoint in it belong to this
    scenario's data, and the checkpoints that this command continues (`planned`: path -> model, config) were
    written by the same model and config."""
    results = out / "results.json"
    if results.is_file():
        try:
            recorded = json.loads(results.read_text())
            recorded = {k: str(recorded[k]) for k in ("scenario", "data_dir", "data_sha256")}
        except (ValueError, UnicodeDecodeError, TypeError, KeyError):
            recorded = None  # unreadable: the resumed run rewrites it, and the checkpoints are checked below
        if recorded and recorded["data_sha256"] != scen.data_sha256:
            raise UsageError(f"{results}: a run trained on other data: scenario {recorded['scenario']!r} in "
                             f"{recorded['data_dir']}, whose item and sequence files differ from those of {scen.name} "
                             f"in {scen.path}. Resume it with --data-dir {recorded['data_dir']}, or start a new run "
                             f"with another --out.")
    for last in planned if results.exists() else []:  # a finished run: every planned training has its last_*.pt
        best = last.with_name(last.name.replace("last_", "best_"))
        if not last.exists() and not last.is_symlink() and (best.exists() or best.is_symlink()):
            raise UsageError(f"{last}: missing from this finished run, though {best} is there: training could "
                             f"continue neither from it (no optimiser state) nor anew (that would replace it). Put it "
                             f"back, or delete {last.parent} to train this model again.")
    for path in sorted(out.rglob("*.pt")) if out.is_dir() else []:
        state = load_checkpoint(path)
        check_checkpoint(state, scen, path)
        if path in planned:
            check_same_run(state, *planned[path], path)
            best = path.with_name(path.name.replace("last_", "best_"))
            if state["best_valid"] >= 0 and not best.exists() and not best.is_symlink():
                raise UsageError(f"{best}: missing, though {path} records the validation MRR of its best epoch "
                                 f"({state['best_valid']:.2f}). Put it back, or delete {path.parent} to train "
                                 f"this model again.")


class Interrupted(KeyboardInterrupt):
    """A Ctrl-C (or SIGTERM) once the run folder `out` is chosen."""

    def __init__(self, out: Path):
        super().__init__()
        self.out = out


def interrupted(argv: list[str], out: Path | None) -> str:
    """The Ctrl-C message: the exact command that continues the run in `out`, its --out included."""
    if out is None or not out.is_dir():
        return "interrupted before anything was written; run the same command again"
    kept, skip = [], False
    for arg in argv:  # the same flags but --out and --resume, which are given below
        if not skip and arg not in ("--out", "--resume") and not arg.startswith("--out="):
            kept.append(arg)
        skip = arg == "--out"
    return f"interrupted; continue with\n    {shlex.join(['python', 'train.py', *kept, '--resume', '--out', str(out)])}"
