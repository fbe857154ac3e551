"""The simple baselines of the paper's Tables 2/3, trained and evaluated by the same code as IFCDSR:
    popularity      the target domain's items ranked by their number of training interactions
    sasrec          SASRec [20]: √q-scaled ID embeddings through its code's causal blocks (SASRecBlock) over S^{X+Y}
    gru4rec         GRU4Rec [13]: ID embeddings and a GRU over S^{X+Y}
    sasrec_target   SASRec over the target domain's sub-sequence only (S^X when X is the target)
    gru4rec_target  GRU4Rec over the target domain's sub-sequence only
§3.2: "In previous methods [13, 20], sequences combining behaviors from domain X and domain Y were used without
distinction", so `sasrec` and `gru4rec` read S^{X+Y}; the `_target` rows are their papers' single-domain models.
All share IFCDSR's Config, interface, training and evaluation, and score the target domain's items (Eq. 9).
Dimensions: B batch, L positions (left-padded), T prediction positions, q width, h heads, n items a model embeds
(N for merged rows, the target domain's for `_target` rows; local ids 0..n-1, global for merged rows; n pads)."""
import torch
import torch.nn as nn

import evaluate
import fused_loss
from data import Scenario, item_counts
from ifcdsr import AttentionEncoder, Config, domain_items, shapes


def popularity(scen: Scenario, target: str, batch: int) -> dict:
    """The popularity row's result: the target domain's items ranked by training interaction counts (`item_counts`)."""
    scores, items, out = item_counts(scen.train, scen.items.num_items).float(), evaluate.target_items(scen, target), {}
    for split in ("valid", "test"):
        cases = evaluate.eval_cases(getattr(scen, split), scen, target)
        ranks = evaluate.rank_cases(lambda h, items, shape: scores[items].expand(h.xy.shape[0], -1), cases, items,
                                    evaluate.negatives(cases, items, split, target), "cpu", batch)
        out[split] = evaluate.metrics(ranks)
    return {**out, "ranks": ranks, "cases": cases}


def cross_entropy_sum(H: torch.Tensor, E: torch.Tensor, y: torch.Tensor, n: int, chunk: int) -> torch.Tensor:
    """Σ_t -log softmax(H_t·E[:n]^T)[y_t]: H (T, q), E (n + 1, q) with the padding row, y (T,) local ids ->
    a 0-d tensor. When the (T, n) logits and their gradient fit in `chunk` they are formed at once; otherwise
    `fused_loss.nll_dot` scores chunk // n positions at a time, the same numbers up to float rounding."""
    if 2 * len(y) * n <= chunk:
        return nn.functional.cross_entropy((H @ E[:n].T).float(), y, reduction="sum")  # (T, n) logits
    return fused_loss.nll_dot(H, E, y, slice(0, n), chunk)


class GRUEncoder(nn.Module):
    """GRU4Rec's encoder: H_t = GRU(F_1..F_t), one layer of width q, dropout on its input and output."""

    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.gru = nn.GRU(width, width, batch_first=True)
        self.drop = nn.Dropout(dropout)

    def forward(self, F_seq: torch.Tensor, is_pad: torch.Tensor) -> torch.Tensor:
        """F_seq (B, L, q) left-padded, is_pad (B, L) -> H (B, L, q), left-padded, 0 at the padding. The GRU
        starts at each sequence's first item: padding never enters its state."""
        B, L, q = F_seq.shape
        length = (~is_pad).sum(1)  # (B,)
        # left-padded -> right-padded: the GRU reads each sequence from its first item, and the padding after
        # its last item cannot change an earlier output (no packing, so the host never waits for the lengths)
        shift = (torch.arange(L, device=F_seq.device) + (L - length)[:, None]) % L  # (B, L) source positions
        right = self.drop(F_seq).gather(1, shift[..., None].expand(B, L, q))  # (B, L, q)
        H = self.gru(right)[0]  # (B, L, q)
        back = (torch.arange(L, device=F_seq.device) - (L - length)[:, None]) % L  # (B, L) right -> left
        H = H.gather(1, back[..., None].expand(B, L, q)).masked_fill(is_pad[..., None], 0.0)  # (B, L, q)
        return self.drop(H)


class SASRecBlock(nn.Module):
    """SASRec's block as its code runs it (Kang & McAuley's, and C2DSR's `ATTENTION`), width d = q:

        Q = LayerNorm(x),  S = Q + Attention(Q·W^Q, x·W^K, x·W^V)·W^O,  G = LayerNorm(S),  F = G + FFN(G)

    with FFN(G) = ReLU(G·W^(1) + b^(1))·W^(2) + b^(2) (§III-B); dropout on the attention weights and inside
    the FFN, none on the attention output.

    Note: SASRec's paper prints x + Dropout(g(LayerNorm(x))) for each sub-layer g (§III-C, `ifcdsr.Block`); its
    code, followed here, normalises the queries only and adds each residual to the normalised input.
    Note: W^O is the output projection of C2DSR's code (torch's MultiheadAttention); SASRec's paper and its
    TensorFlow code have none.
    """

    def __init__(self, width: int, n_heads: int, dropout: float):
        super().__init__()
        assert width % n_heads == 0, f"width {width} must be divisible by n_heads {n_heads}"
        self.n_heads, self.dropout = n_heads, dropout
        self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.W_Q, self.W_K, self.W_V, self.W_O = (nn.Linear(width, width) for _ in range(4))
        self.ffn = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Dropout(dropout), nn.Linear(width, width),
                                 nn.Dropout(dropout))  # W^(1), W^(2), dropout after each

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """x (B, L, d), allowed (B, L, L) the keys each position may attend to -> F (B, L, d)."""
        B, L, d = x.shape
        Q = self.ln_1(x)  # (B, L, d): the queries alone are normalised; the keys and values are x
        q, k, v = (W(t).view(B, L, self.n_heads, d // self.n_heads).transpose(1, 2)
                   for W, t in ((self.W_Q, Q), (self.W_K, x), (self.W_V, x)))  # each (B, h, L, d/h)
        y = nn.functional.scaled_dot_product_attention(  # (B, h, L, d/h)
            q, k, v, attn_mask=allowed[:, None], dropout_p=self.dropout if self.training else 0.0)
        # S = Q + Attention(Q·W^Q, x·W^K, x·W^V)·W^O: the residual on Q, no dropout on the attention output
        S = Q + self.W_O(y.transpose(1, 2).reshape(B, L, d))  # (B, L, d)
        G = self.ln_2(S)  # (B, L, d)
        return G + self.ffn(G)  # (B, L, d) F = G + FFN(G): the residual on the normalised input


class SASRecEncoder(AttentionEncoder):
    """SASRec's encoder as its code runs it: Ê = √q·E + P, dropout, `SASRecBlock`s, a last LayerNorm, with
    ifcdsr.AttentionEncoder's positions and masks (causal, padding keys masked).

    Note: positions count from each sequence's first item, as in IFCDSR's encoder, so left padding changes
    nothing; SASRec's code numbers the slots of the left-padded window (the last item always at L - 1).
    Note: initialised as IFCDSR's encoders: E ~ N(0, 1/q) (so √q·E has entries of variance 1), P ~ N(0, 0.02²),
    torch's defaults elsewhere; SASRec's code draws its weights from Xavier's distributions.
    """

    def __init__(self, width: int, cfg: Config):
        super().__init__(width, cfg, block=SASRecBlock)

    def forward(self, E_seq: torch.Tensor, is_pad: torch.Tensor) -> torch.Tensor:
        """E_seq (B, L, q) item embeddings in sequence order, is_pad (B, L) -> H (B, L, q)."""
        # Ê = √q·E + P: SASRec's code scales the item embeddings before adding the positions (its paper: E + P)
        return super().forward(E_seq * E_seq.shape[-1] ** 0.5, is_pad)


class SequenceBaseline(nn.Module):
    """What SASRec and GRU4Rec share, in both forms: the item embeddings E (n + 1, q), the loss and the scores.

    Note: trained with softmax cross-entropy at every next-item position of the sequence read, not with the
    papers' sampled losses (SASRec's: one sampled negative and a binary loss, which is weaker; GRU4Rec's:
    pairwise ranking losses over the other items of its mini-batch). The merged rows' softmax runs over all
    N items: the next item of S^{X+Y} can be in either domain, and these models make no distinction between
    the domains (§3.2); the `_target` rows' runs over the target domain's.
    At test time both score only the target domain's items (Eq. 9's candidates): for the merged rows their
    order is that of the softmax over N. Dot-product scores, as in SASRec and GRU4Rec (IFCDSR's are cosines
    over τ).

    Memory: the loss's (T, n) logits. At Movie-Book size (N = 100,782) a batch of 256 × 15 positions gives
    1.5 GB of fp32 logits (and as much for their gradient) for the merged rows: computed at once while they
    fit in half of `chunk()` (on CUDA a quarter of the free memory), else in chunks by `fused_loss.nll_dot`.
    """

    merged = True  # read S^{X+Y} and embed both domains' items; False: the target domain's sub-sequence only

    def __init__(self, cfg: Config, num_x: int, num_y: int, encoder: nn.Module):
        super().__init__()
        self.cfg, self.num_x, self.num_y = cfg, num_x, num_y
        self.N = self.pad = num_x + num_y  # the global padding id, as in the data
        self.items = domain_items(cfg.target, num_x, self.N)  # global ids of the target domain: ranked at test
        self.vocab = slice(0, self.N) if self.merged else self.items  # global ids of the items embedded
        self.n = self.vocab.stop - self.vocab.start
        # S^{X+Y}, or S^X / S^Y: the target domain's sub-sequence
        self.view = "xy" if self.merged else "x" if cfg.target == "X" else "y"
        self.views = (self.view,)  # the loss's one part
        self.E = nn.Embedding(self.n + 1, cfg.q, padding_idx=self.n)
        nn.init.normal_(self.E.weight, std=cfg.q ** -0.5)  # as IFCDSR's E_id
        with torch.no_grad():
            self.E.weight[self.n].zero_()
        self.encoder = encoder

    def hidden(self, seq: torch.Tensor) -> torch.Tensor:
        """seq (B, L) global ids of the view this model reads -> H (B, L, q)."""
        is_pad = seq == self.pad
        local = torch.where(is_pad, self.n, seq - self.vocab.start)  # (B, L)
        return self.encoder(self.E(local), is_pad)

    def chunk(self) -> int:
        """`Config.score_chunk` resolved (`fused_loss.chunk`): the (positions × items) logits computed at once."""
        return fused_loss.chunk(self.cfg.score_chunk, self.E.weight.device)

    def loss(self, inputs, targets, shape=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean cross-entropy over every next-item position of the view read; `shape` as in `IFCDSR.loss`."""
        shape = (shape or shapes(self.pad, inputs, targets, self.E.weight.device))[self.view]
        seq, nxt = getattr(inputs, self.view)[:, -shape.width:], getattr(targets, self.view)[:, -shape.width:]
        H = self.hidden(seq).flatten(0, 1)[shape.at]  # (T, q) at every next-item position
        y = nxt.flatten()[shape.at] - self.vocab.start  # (T,) local ids
        nll = cross_entropy_sum(H, self.E.weight, y, self.n, self.chunk())  # softmax over the n items
        L = nll / max(shape.count, 1)
        return L, {self.view: L.detach()}

    @torch.no_grad()
    def score(self, history, items: slice, shape=None) -> torch.Tensor:
        """(B, |items|) dot products of the last hidden state with `items`, a domain's items: the candidates."""
        if not self.vocab.start <= items.start <= items.stop <= self.vocab.stop:
            raise ValueError(f"{type(self).__name__} embeds the items {self.vocab}, not {items}")
        seq = getattr(history, self.view)[:, -(shape or shapes(self.pad, history))[self.view].width:]
        local = slice(items.start - self.vocab.start, items.stop - self.vocab.start)  # the items' rows of E
        return self.hidden(seq)[:, -1] @ self.E.weight[local].T  # (B, |items|)

    def scorer(self):
        """`score`, for a pass over many batches (as `IFCDSR.scorer`)."""
        return self.score


class SASRec(SequenceBaseline):
    """SASRec [20]: √q·E plus positions through SASRec's blocks (`SASRecEncoder`), scored by dot products with the
    same E, as SASRec's; trained with SequenceBaseline's full softmax (its Note)."""

    def __init__(self, cfg: Config, num_x: int, num_y: int):
        super().__init__(cfg, num_x, num_y, SASRecEncoder(cfg.q, cfg))


class GRU4Rec(SequenceBaseline):
    """GRU4Rec [13]: a GRU over E (`GRUEncoder`), scored by dot products with the same E.

    Note: the output layer is the input embeddings E (tied), without a bias; GRU4Rec's has its own weights and
    a bias per item.
    """

    def __init__(self, cfg: Config, num_x: int, num_y: int):
        super().__init__(cfg, num_x, num_y, GRUEncoder(cfg.q, cfg.dropout))


class SASRecTarget(SASRec):
    merged = False


class GRU4RecTarget(GRU4Rec):
    merged = False
