"""Tests of train.py's checkpoints: written in the background from a snapshot; the reading and checking of a checkpoint
are in test_train.py (resume, --eval-only) and test_hostile.py (foreign, truncated and hostile files)."""
import threading

import pytest
import torch

import train



def test_checkpoints_are_written_in_the_background_from_a_snapshot_and_a_failed_write_is_raised(tmp_path,
                                                                                                monkeypatch):
    """What `Checkpoints.write` was handed is what the file holds, whatever training changes after it returns
    and before the thread writes (the tensor in place, the history list); a write that fails is raised by the
    next `wait`, once."""
    trained, save = threading.Event(), train.save
    monkeypatch.setattr(train, "save", lambda state, path: (trained.wait(), save(state, path)))
    writer = train.Checkpoints()
    weight, history = torch.zeros(3), [{"epoch": 1}]
    writer.write({tmp_path / "last_X.pt": {"model": {"w": weight}, "history": history}})
    weight += 1  # the next epoch trains while the thread waits to write
    history.append({"epoch": 2})
    trained.set()
    writer.wait()
    saved = torch.load(tmp_path / "last_X.pt", weights_only=True)
    assert saved["model"]["w"].tolist() == [0, 0, 0] and saved["history"] == [{"epoch": 1}]
    writer.write({tmp_path / "no such folder" / "last_X.pt": {"w": weight}})
    with pytest.raises(OSError):
        writer.wait()
    writer.wait()  # raised once
