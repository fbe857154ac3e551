"""The rows of the tables: every model train.py runs, what it is, and the presets of `--models`."""
from __future__ import annotations

from dataclasses import dataclass

import baselines


@dataclass(frozen=True)
class Row:
    """One model of the tables. An IFCDSR row is its two Config flags; a baseline is its class in baselines.py;
    popularity trains nothing. A baseline and popularity read neither flag: their configs record the values below.

    Note: Table 4's rows read as: "original framework" = ID only and the merged view S^{X+Y} alone; "+ image
    fusion" adds the image branch; "+ multiple attention" (the three views) is IFCDSR.
    """
    label: str  # the row's name in the printed tables
    baseline: type | None = None  # a baseline's class; None for an IFCDSR row and for popularity
    use_image: bool = False  # Config.use_image: the image branch (Eq. 5); a row with it needs image embeddings
    multi_attention: bool = True  # Config.multi_attention: the three views; False: S^{X+Y} alone
    trained: bool = True  # False: popularity ranks by training counts, once (seed None), with no checkpoint

    @property
    def ifcdsr(self) -> bool:
        return self.trained and self.baseline is None

    @property
    def shared(self) -> bool:
        """One training serves every target domain: a merged baseline's loss predicts every next item of
        S^{X+Y} over all N items, whatever the target; only its validation (so its best epoch), its test and
        its candidates are the target domain's. IFCDSR's Eq. 7 weighs the views by the target, so it trains
        once per target domain, as do the `_target` rows."""
        return self.baseline is not None and self.baseline.merged

    def flags(self) -> dict:
        """The Config fields that the row sets for each of its trainings."""
        return {"use_image": self.use_image, "multi_attention": self.multi_attention}


ROWS = {  # every row, in the paper's order: baselines first, IFCDSR last
    "popularity": Row("Popularity", trained=False),
    "gru4rec": Row("GRU4Rec", baselines.GRU4Rec),
    "sasrec": Row("SASRec", baselines.SASRec),
    "gru4rec_target": Row("GRU4Rec, target only", baselines.GRU4RecTarget),
    "sasrec_target": Row("SASRec, target only", baselines.SASRecTarget),
    "original": Row("ID only, merged view", use_image=False, multi_attention=False),  # Table 4 row 1
    "image_fusion": Row("+ image fusion", use_image=True, multi_attention=False),  # Table 4 row 2
    "ifcdsr_id": Row("IFCDSR ID only", use_image=False, multi_attention=True),  # --no-image
    "ifcdsr": Row("IFCDSR", use_image=True, multi_attention=True),  # Table 4 row 3: + multiple attention
}
PRESETS = {  # --models NAME: a named set of rows
    "default": ("popularity", "ifcdsr"),
    "demo": ("popularity", "ifcdsr_id", "ifcdsr"),  # the demo's default: the ID-only model shows what images add
    "compare": ("popularity", "gru4rec", "sasrec", "ifcdsr_id", "ifcdsr"),  # --compare: Tables 2/3's rows
    "ablation": ("popularity", "original", "image_fusion", "ifcdsr"),  # --ablation: Table 4's rows
}


def variant(use_image: bool, multi_attention: bool) -> str:
    """The IFCDSR row of these two flags."""
    return next(name for name, row in ROWS.items() if row.ifcdsr and row.flags() == {
        "use_image": use_image, "multi_attention": multi_attention})


def needs_images(name: str) -> bool:
    return ROWS[name].use_image
