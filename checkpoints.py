"""Checkpoints: written whole in the background while training goes on, read back as data and checked against
the scenario and the command before anything uses them; --eval-only's config and data from a checkpoint."""
from __future__ import annotations

import pickle
import threading
import warnings
import zipfile
from dataclasses import asdict, fields
from pathlib import Path

import torch
from torch.utils._pytree import tree_leaves, tree_map

from common import UsageError, atomic_write, file_problem
from data import Scenario, resolve_scenario
from ifcdsr import Config, ConfigError
from rows import ROWS

CHECKPOINT = {"model_name", "model", "config", "scenario", "data_dir", "data_sha256", "images_sha256", "num_x",
              "num_y", "epoch", "best_valid"}  # what evaluation needs, in best_*.pt: tensors, numbers, strings, dicts
RESUME = {"optimizer", "bad", "history", "rng"}  # what a resume needs besides, in last_*.pt only
SCHEDULE = ("epochs", "patience", "eval_every")  # the settings a --resume may change: e.g. train a finished run longer


def save(state: dict, path: Path) -> None:
    """A checkpoint, written whole or not at all."""
    def write(f):
        try:
            torch.save(state, f)
        except RuntimeError as err:  # torch's zip writer reports a failed write (a full disk) as a RuntimeError
            raise OSError(f"{path}: could not be written ({str(err).splitlines()[0][:200]}); is the disk full? "
                          f"The previous checkpoint is kept: free space and continue with --resume.") from None
    atomic_write(path, write)


def host_copy(state):
    """`state` with every tensor copied to host memory and every container rebuilt: what training changes
    afterwards (parameters, Adam's moments, the history list) no longer reaches it. A device's copies are
    queued in stream order without waiting, into page-locked memory; `done` is set once they have landed."""
    def copy(x):
        if not isinstance(x, torch.Tensor):
            return x
        if x.device.type == "cpu":
            return x.detach().clone()
        return torch.empty(x.shape, dtype=x.dtype, pin_memory=True).copy_(x.detach(), non_blocking=True)
    snapshot = tree_map(copy, state)
    done = torch.cuda.Event() if torch.cuda.is_available() and any(
        isinstance(t, torch.Tensor) and t.is_cuda for t in tree_leaves(state)) else None
    if done is not None:
        done.record()
    return snapshot, done


class Checkpoints:
    """Checkpoints written by a background thread while the next epoch trains: `write` snapshots the states
    (`host_copy`) and returns; the thread waits for the copies, then `save`s each file whole. One write is in
    flight at a time (the next waits for it), and `wait` returns once it is on disk, re-raising its error."""

    def __init__(self):
        self.thread, self.error = None, None

    def write(self, states: dict[Path, dict]) -> None:
        self.wait()
        snapshots = {path: host_copy(state) for path, state in states.items()}

        def work():
            try:
                for path, (snapshot, done) in snapshots.items():
                    if done is not None:
                        done.synchronize()
                    save(snapshot, path)
            except BaseException as err:  # raised in the training thread by the next write or wait
                self.error = err
        self.thread = threading.Thread(target=work, name="checkpoints")
        self.thread.start()

    def wait(self, raise_error: bool = True) -> None:
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        error, self.error = self.error, None
        if error is not None and raise_error:
            raise error


def load_checkpoint(path: Path) -> dict:
    """A checkpoint read as data (weights_only: tensors, numbers, strings, lists, dicts; nothing in the file
    is executed) onto the CPU, whatever device wrote it, with the keys every checkpoint of this version holds.
    `load_state_dict` then places each tensor where the model and the optimizer are."""
    check_checkpoint_file(path)
    refused = f"{path}: not an IFCDSR checkpoint ({{}}); nothing in it was run. Use a best_*.pt or last_*.pt " \
              f"that train.py wrote."
    try:  # torch.save writes a zip archive with the pickled state in <name>/data.pkl
        with zipfile.ZipFile(path) as archive:
            if not any(name.endswith("/data.pkl") for name in archive.namelist()):
                raise UsageError(refused.format("a zip archive without the data.pkl that torch.save writes"))
    except zipfile.BadZipFile:
        raise UsageError(refused.format("not the zip archive that torch.save writes: a foreign or truncated "
                                        "file")) from None
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before it refuses a foreign pickle
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UsageError(refused.format("UnpicklingError: its pickle asks for more than tensors, numbers, strings, "
                                        "lists and dicts")) from None
    except Exception as err:  # a damaged record inside a well-formed archive
        raise UsageError(refused.format(f"{type(err).__name__}: torch could not read its records")) from None
    if not isinstance(state, dict) or not CHECKPOINT <= state.keys():
        missing = sorted(CHECKPOINT - state.keys()) if isinstance(state, dict) else type(state).__name__
        raise UsageError(f"{path}: not an IFCDSR checkpoint of this version (missing {missing}); train again with "
                         f"the same command to re-create it.")
    known = {f.name for f in fields(Config)}
    extra = sorted(state["config"].keys() - known) if isinstance(state["config"], dict) else "?"
    if state["model_name"] not in ROWS or extra:
        raise UsageError(f"{path}: not an IFCDSR checkpoint of this version (model {state['model_name']!r}, config "
                         f"fields {extra} unknown); train again with the same command to re-create it.")
    return state


def load_weights(model: torch.nn.Module, state: dict, path: Path) -> None:
    """The checkpoint's weights into `model`, or a UsageError naming the file: a checkpoint of an earlier form
    of the same row (another shape, other parameters) does not fit."""
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise UsageError(f"{path}: its weights do not fit this model ({str(err).splitlines()[0]}); train again "
                         f"into another --out.") from None


def check_checkpoint_file(path: Path) -> None:
    """A checkpoint is read only if it is a regular file: a FIFO would block torch.load, /dev/zero fill memory."""
    problem = file_problem(path)
    if problem:
        raise UsageError(f"{path}: {problem}; expected a best_*.pt or last_*.pt file that train.py wrote.")


def check_checkpoint(state: dict, scen: Scenario, path: Path) -> None:
    """The checkpoint was trained on this scenario's data: the same files (and image embeddings, if it used them)."""
    data_differs = state["data_sha256"] != scen.data_sha256
    # the embeddings matter where this command reads them, for a checkpoint that uses them
    images_differ = scen.images_sha256 is not None and state["config"].get("use_image") and \
        state["images_sha256"] != scen.images_sha256
    if data_differs or images_differ:
        what = "item and sequence files" if data_differs else "image embeddings"
        raise UsageError(f"{path}: trained on other data: scenario {state['scenario']!r} in {state['data_dir']} "
                         f"({state['num_x']}+{state['num_y']} items), whose {what} differ from those of "
                         f"{scen.name} in {scen.path} ({scen.items.num_x}+{scen.items.num_y} items). Pass the data "
                         f"it was trained on (--data-dir {state['data_dir']}), or start a new run with another --out.")


def check_same_run(state: dict, name: str, cfg: Config, path: Path) -> None:
    """A --resume continues the same training: the same model and config, but for the schedule."""
    differs = sorted(k for k, v in asdict(cfg).items() if k not in SCHEDULE and state["config"].get(k) != v)
    if state["model_name"] != name or differs:
        raise UsageError(f"{path}: was written by {state['model_name']} with a different config "
                         f"({', '.join(differs) or 'model'}); resume with the same flags (only --epochs, "
                         f"--patience, --eval-every may change), or start a new run with another --out.")


def checkpoint_config(state: dict, path: Path) -> Config:
    """The config a checkpoint was trained with, checked against Config's ranges."""
    try:
        cfg = Config(**state["config"])
        cfg.check()
    except ConfigError as err:
        raise UsageError(f"{path}: not an IFCDSR checkpoint of this version (config {err}).") from None
    return cfg


def checkpoint_data(scenario: str | None, data_dir: str | None, state: dict, path: Path) -> tuple[str, Path]:
    """--eval-only's data: --data-dir or --scenario when given, else the folder the checkpoint records."""
    if data_dir is not None or scenario is not None:
        return resolve_scenario(scenario, data_dir)
    folder = Path(state["data_dir"])
    if not folder.is_dir():
        raise UsageError(f"{path}: trained on {folder}, which is not there; pass that data with --data-dir DIR "
                         f"or --scenario NAME.")
    print(f"data: {folder}, as the checkpoint records (--data-dir DIR reads other data)", flush=True)
    return state["scenario"], folder
