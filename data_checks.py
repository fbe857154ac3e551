"""What a run checks in its scenario before it trains: validation and test cases in every target domain, and the
warnings that its numbers are read with."""
from __future__ import annotations

import torch

from data import EMBEDDINGS_FILE, SPLIT_FILES, DataError, Scenario
from evaluate import NUM_NEGATIVES, eval_cases, target_items


def check_cases(scen: Scenario, targets) -> None:
    """Every target domain has validation and test cases (a ground truth in that domain)."""
    for target in targets:
        for split in ("valid", "test"):
            if len(eval_cases(getattr(scen, split), scen, target)) == 0:
                raise DataError(f"{scen.path / SPLIT_FILES[split]}: no sequence ends in an item of domain {target}, "
                                f"so a model for target {target} could be neither selected nor tested. Pass "
                                f"--target {'Y' if target == 'X' else 'X'}, or add such sequences.")


def data_warnings(scen: Scenario, targets) -> list[str]:
    """What a run's numbers should be read with: items without an image, held-out sequences that repeat a
    training sequence, and a domain too small for 999 distinct negatives."""
    N, notes = scen.items.num_items, []
    zero = 0 if scen.E_img is None else int((scen.E_img == 0).all(dim=1).sum())
    if zero:
        notes.append(f"{zero:,} of {N:,} items ({100 * zero / N:.1f}%) have no image (a zero row in "
                     f"{EMBEDDINGS_FILE}): only their ID embedding can rank them")
    seen = {tuple(r) for r in torch.cat([scen.train.inputs.xy, scen.train.targets.xy[:, -1:]], 1).tolist()}
    for split in ("valid", "test"):
        cases = getattr(scen, split)
        repeats = sum(tuple(r) in seen for r in torch.cat([cases.history.xy, cases.target[:, None]], 1).tolist())
        if repeats:
            notes.append(f"{repeats:,} of {len(cases):,} {split} sequences repeat a training sequence (their "
                         f"last {scen.train.inputs.xy.shape[1] + 1} items): their targets were trained on")
    for target in targets:
        n = len(range(N)[target_items(scen, target)])
        if n - 1 < NUM_NEGATIVES:
            notes.append(f"domain {target} has {n:,} items: its {NUM_NEGATIVES} sampled negatives repeat some of "
                         f"the other {n - 1:,}, which makes the sampled999 protocol harder than full ranking")
    return notes
