"""The simple baselines of the paper's Tables 2/3, trained and evaluated by the same code as IFCDSR.

    Popularity  the target domain's items ranked by their number of training interactions
    SASRec      ID embeddings and causal self-attention (ifcdsr.AttentionEncoder, the same encoder as IFCDSR's)
    GRU4Rec     ID embeddings and a GRU

SASRec and GRU4Rec are single-domain models in their own papers, and are run so here (the paper does
not say how it ran them): they read only the target domain's sub-sequence (S^X when X is the target)
and score only its items, by the dot product of the last hidden state with each item's embedding. They
share IFCDSR's Config (q, dropout, L, blocks, heads, target domain) and its whole training loop,
optimiser, early stopping and evaluation.

Dimension letters: B batch, L positions (left-padded), P prediction positions, n items of the target
domain, q embedding width. Inside a model an item has its local id 0..n-1 in the target domain; n pads.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from data import Scenario, item_counts
from ifcdsr import AttentionEncoder, Config, domain_items, shapes


def popularity_scores(scen: Scenario) -> torch.Tensor:
    """(N,) training interaction counts per item: the popularity baseline's score."""
    return item_counts(scen.train, scen.items.num_items).float()


class GRUEncoder(nn.Module):
    """GRU4Rec's encoder: H_t = GRU(F_1..F_t), one layer of width q, dropout on its input and output."""

    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.gru = nn.GRU(width, width, batch_first=True)
        self.drop = nn.Dropout(dropout)

    def forward(self, F_seq: torch.Tensor, is_pad: torch.Tensor) -> torch.Tensor:
        """F_seq (B, L, q) left-padded, is_pad (B, L) -> H (B, L, q), left-padded. The GRU starts at each
        sequence's first item: padding never enters its state."""
        B, L, q = F_seq.shape
        length = (~is_pad).sum(1)  # (B,)
        # left-padded -> right-padded, so that a packed sequence starts at the first item
        shift = (torch.arange(L, device=F_seq.device) + (L - length)[:, None]) % L  # (B, L) source positions
        right = self.drop(F_seq).gather(1, shift[..., None].expand(B, L, q))  # (B, L, q)
        packed = pack_padded_sequence(right, length.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        H, _ = pad_packed_sequence(self.gru(packed)[0], batch_first=True, total_length=L)  # (B, L, q)
        back = (torch.arange(L, device=F_seq.device) - (L - length)[:, None]) % L  # (B, L) right -> left
        return self.drop(H.gather(1, back[..., None].expand(B, L, q)))  # (B, L, q)


class SingleDomain(nn.Module):
    """What SASRec and GRU4Rec share: the target domain's item embeddings E (n + 1, q), the loss and the scores.

    Note: trained with softmax cross-entropy over all the target domain's items at every next-item position
    (the cross-entropy form of SASRec; SASRec's paper trains with one sampled negative and a binary loss, which
    is weaker); dot-product scores, as in SASRec and GRU4Rec (IFCDSR's are cosines over τ).
    """

    def __init__(self, cfg: Config, num_x: int, num_y: int, encoder: nn.Module):
        super().__init__()
        self.cfg, self.num_x, self.num_y = cfg, num_x, num_y
        self.N = self.pad = num_x + num_y  # the global padding id, as in the data
        self.items = domain_items(cfg.target, num_x, self.N)  # global ids of the target domain
        self.n = self.items.stop - self.items.start
        self.view = "x" if cfg.target == "X" else "y"  # S^X or S^Y: the target domain's sub-sequence
        self.E = nn.Embedding(self.n + 1, cfg.q, padding_idx=self.n)
        nn.init.normal_(self.E.weight, std=cfg.q ** -0.5)  # as IFCDSR's E_id
        with torch.no_grad():
            self.E.weight[self.n].zero_()
        self.encoder = encoder

    def hidden(self, seq: torch.Tensor) -> torch.Tensor:
        """seq (B, L) global ids of the target domain's sub-sequence -> H (B, L, q)."""
        is_pad = seq == self.pad
        local = torch.where(is_pad, self.n, seq - self.items.start)  # (B, L)
        return self.encoder(self.E(local), is_pad)

    def loss(self, inputs, targets, shape=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean cross-entropy over every next-item position of the target domain's sub-sequence; `shape` as
        in `IFCDSR.loss`."""
        shape = (shape or shapes(self.pad, inputs, targets, self.E.weight.device))[self.view]
        seq, nxt = getattr(inputs, self.view)[:, -shape.width:], getattr(targets, self.view)[:, -shape.width:]
        H = self.hidden(seq).flatten(0, 1)[shape.at]  # (P, q) at every next-item position
        logits = H @ self.E.weight[:self.n].T  # (P, n) dot products with every item of the domain
        y = nxt.flatten()[shape.at] - self.items.start  # (P,) local ids
        L = F.cross_entropy(logits.float(), y, reduction="sum") / max(shape.count, 1)
        return L, {self.view: L.detach()}

    @torch.no_grad()
    def score(self, history, items: slice, shape=None) -> torch.Tensor:
        """(B, n) dot products of the last hidden state with the target domain's items, its only candidates."""
        if items != self.items:
            raise ValueError(f"a single-domain model scores its target domain's items {self.items}, not {items}")
        seq = getattr(history, self.view)[:, -(shape or shapes(self.pad, history))[self.view].width:]
        return self.hidden(seq)[:, -1] @ self.E.weight[:self.n].T  # (B, n)


class SASRec(SingleDomain):
    def __init__(self, cfg: Config, num_x: int, num_y: int):
        super().__init__(cfg, num_x, num_y, AttentionEncoder(cfg.q, cfg))


class GRU4Rec(SingleDomain):
    def __init__(self, cfg: Config, num_x: int, num_y: int):
        super().__init__(cfg, num_x, num_y, GRUEncoder(cfg.q, cfg.dropout))
