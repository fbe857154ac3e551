"""IFCDSR: Image Fusion for Cross-Domain Sequential Recommendation (Wu et al., WWW Companion 2025).

The model and the paper's equations (search for "Eq."); nothing about files or loops.

Dimension letters used in shape comments:
    B  batch of sequences          L  positions (max_len, left-padded)
    N  items of both domains       P  prediction positions gathered from a batch
    q  width of the learnable ID embeddings E_id       e  width of the frozen CLIP embeddings E_img
Items have one global id space: domain X = 0..|X|-1, domain Y = |X|..N-1, padding id = N.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

VIEWS = ("x", "y", "xy")  # S^X, S^Y, S^{X+Y}


@dataclass
class Config:
    # model (paper §4 "Implementation Details")
    q: int = 256  # q, width of the learnable ID embedding E_id
    e: int = 512  # e, width of E_img; always taken from the embedding file
    alpha: float = 0.7  # α in Eq. 5: weight of the ID branch
    lambda1: float = 0.1  # λ1 in Eq. 7/8: weight of the source-domain view
    lambda2: float = 0.4  # λ2 in Eq. 7/8: weight of the merged view S^{X+Y}
    dropout: float = 0.3  # dropout rate
    max_len: int = 15  # L, the last 15 items of a history are kept
    n_blocks: int = 2  # Note: not stated in the paper; C2DSR's (whose settings §4 adopts) value
    n_heads: int = 1  # Note: not stated in the paper; C2DSR's value
    temperature: float = 0.1  # Note: τ divides Eq. 2 before the softmax; τ = 1 is the paper literally (README "τ")
    use_image: bool = True  # False = --no-image: ID branch only (α = 1)
    multi_attention: bool = True  # False = --no-multi-attention: only the S^{X+Y} view
    target: str = "X"  # the target domain of Eq. 7-9; "Y" swaps the roles of the domains
    # training
    batch_size: int = 256  # mini-batch size
    lr: float = 5e-4  # learning rate, from the paper's grid {1e-3, 5e-4, 1e-4}, chosen on validation (README)
    weight_decay: float = 5e-5  # L2 coefficient, from the paper's grid {1e-4, 5e-5, 1e-5}, chosen on validation
    epochs: int = 100  # training epochs
    patience: int = 10  # early stopping: evaluations without a better validation MRR
    eval_every: int = 1  # validate every this many epochs
    score_chunk: int = 2**25  # Note: positions x items scored at once in the loss (bounds memory, not results)
    seed: int = 0  # one seed for everything, evaluation negatives included

    def replace(self, **overrides) -> "Config":
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown config field(s) {unknown}; known: {sorted(known)}")
        cfg = Config(**{**asdict(self), **overrides})
        cfg.check()
        return cfg

    def check(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1] (α in Eq. 5), got {self.alpha}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.lambda1 < 0 or self.lambda2 < 0:
            raise ValueError(f"lambda1 and lambda2 must be >= 0, got {self.lambda1}, {self.lambda2}")
        if self.target not in ("X", "Y"):
            raise ValueError(f"target must be 'X' or 'Y', got {self.target!r}")

    def view_weights(self) -> dict[str, float]:
        """Weights of Eq. 7/8: 1 for the target view, λ1 for the source view, λ2 for the merged view."""
        if not self.multi_attention:  # Table 4 row 1/2: all behaviour combined into one representation
            return {"xy": 1.0}
        target, source = ("x", "y") if self.target == "X" else ("y", "x")
        return {target: 1.0, source: self.lambda1, "xy": self.lambda2}


# ----------------------------------------------------------------------------- Eq. 1: attention layer


class SelfAttention(nn.Module):
    def __init__(self, width: int, n_heads: int, dropout: float):
        super().__init__()
        assert width % n_heads == 0, f"width {width} must be divisible by n_heads {n_heads}"
        self.n_heads, self.dropout = n_heads, dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        B, L, d = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_heads, d // self.n_heads).unbind(2)  # each (B, L, h, d/h)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, h, L, d/h)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None],
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(B, L, d))  # (B, L, d)


class Block(nn.Module):
    """A pre-LayerNorm transformer block, as in SASRec: attention, then a point-wise feed-forward."""

    def __init__(self, width: int, n_heads: int, dropout: float):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = SelfAttention(width, n_heads, dropout)
        self.ffn = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Dropout(dropout), nn.Linear(width, width))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln_1(x), allowed))
        return x + self.drop(self.ffn(self.ln_2(x)))


class AttentionEncoder(nn.Module):
    """(Eq. 1) H = Attention(F): causal self-attention over one view of one modality.

    Note: the paper does not specify the attention layer; this is SASRec's (causal,
    learnable positions, padding masked), the encoder of the C2DSR line of work.
    """

    def __init__(self, width: int, cfg: Config):
        super().__init__()
        self.positions = nn.Embedding(cfg.max_len, width)
        nn.init.normal_(self.positions.weight, std=0.02)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(width, cfg.n_heads, cfg.dropout) for _ in range(cfg.n_blocks))
        self.ln_f = nn.LayerNorm(width)

    def forward(self, F_seq: torch.Tensor, is_pad: torch.Tensor) -> torch.Tensor:
        """F_seq (B, L, d) item embeddings in sequence order, is_pad (B, L) -> H (B, L, d)."""
        B, L, _ = F_seq.shape
        # positions count from each sequence's first real item, so left padding changes nothing
        pos = (torch.cumsum(~is_pad, dim=1) - 1).clamp(min=0)  # (B, L)
        x = self.drop(F_seq + self.positions(pos))
        causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()  # query i sees keys j <= i
        allowed = causal & ~is_pad[:, None, :]  # (B, L, L) and never a padding key ...
        allowed = allowed | torch.eye(L, dtype=torch.bool, device=x.device)  # ... except itself (no empty row)
        for block in self.blocks:
            x = block(x, allowed)
        return self.ln_f(x)  # (B, L, d)


# ----------------------------------------------------------------------------- Eq. 2-6: scoring


def unit(x: torch.Tensor) -> torch.Tensor:
    """x / ‖x‖ along the last dimension, with an epsilon: a zero row (an item without an image) stays zero."""
    return F.normalize(x, dim=-1)


def similarity(h: torch.Tensor, E_unit: torch.Tensor, temperature: float) -> torch.Tensor:
    """(Eq. 2) Sim(h, E) = h·E^T / (‖h‖‖E‖), divided by τ.  h (P, d), E_unit (N, d) -> (P, N).

    E_unit = unit(E) is normalised once per step by the caller, not once per position; a zero
    row has similarity 0 with everything. 1/τ scales h, the smaller operand.
    """
    return (unit(h) / temperature) @ E_unit.T  # (P, N)


def _log(w: float) -> float:
    return math.log(w) if w > 0 else -math.inf  # log 0 = -inf: a branch of weight 0 drops out


def log_prob(h_id: torch.Tensor, E_id: torch.Tensor, h_img: torch.Tensor | None, E_img: torch.Tensor | None,
             alpha: float, temperature: float) -> torch.Tensor:
    """log P(· | S) over all N items for P positions of one view (Eq. 3-5) -> (P, N).
    E_id, E_img: the item matrices with unit rows (see `similarity`)."""
    # (Eq. 3) P_id = softmax(Sim(h_id, E_id))
    log_P_id = F.log_softmax(similarity(h_id, E_id, temperature).float(), dim=-1)  # (P, N)
    if h_img is None:
        return log_P_id
    # (Eq. 4) P_img = softmax(Sim(h_img, E_img))
    log_P_img = F.log_softmax(similarity(h_img, E_img, temperature).float(), dim=-1)  # (P, N)
    # (Eq. 5) P = α·P_id + (1-α)·P_img, in log space: log(e^(log α + log P_id) + e^(log(1-α) + log P_img))
    return torch.logaddexp(log_P_id + _log(alpha), log_P_img + _log(1.0 - alpha))  # (P, N)


def _nll_sum(h_id, E_id, h_img, E_img, target, alpha, temperature):
    """The sum of Eq. 6 computed plainly from `log_prob`, with (P, N) tensors and autograd: the
    reference that `nll` is tested against."""
    log_P = log_prob(h_id, E_id, h_img, E_img, alpha, temperature)  # (P, N)
    return -log_P.gather(1, target[:, None]).sum()


def _logits(a: torch.Tensor, E: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """(Eq. 2) s = Sim(h, E) = a·E^T with a = unit(h)/τ, written into `out` (c, N) in fp32.

    `out` is reused for every chunk: on CPU a fresh (c, N) tensor costs page faults that take as long
    as the product itself. Under autocast (bf16 on CUDA) the product runs in its dtype and is copied in.
    """
    if torch.is_autocast_enabled(a.device.type):
        return out.copy_(a @ E.T)
    return torch.mm(a, E.T, out=out)


def _exp_(s: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """s <- exp(s - m) in place; returns (m, Z = Σ exp(s - m)), each (c, 1), so that (Eq. 3/4)
    softmax(s) = s / Z with no second (c, N) tensor.

    Eq. 2 bounds every logit: |s| <= 1/τ. For 1/τ <= 60, exp(s) lies in [e^-60, e^60] and Z stays far
    inside fp32's range, so m = 0 and the two passes of a row maximum are saved; otherwise m is the
    row maximum, as in a textbook softmax. Either way the result is the same up to rounding.
    """
    if 1 / temperature <= 60:
        m = s.new_zeros(len(s), 1)
    else:
        m = s.amax(dim=-1, keepdim=True)
        s.sub_(m)
    return m, s.exp_().sum(dim=-1, keepdim=True)


def _nll_chunks(branches, target: torch.Tensor, rows: int, grads: bool, temperature: float):
    """Σ_t -log P(y_t | S) (Eq. 2-6) for P positions scored `rows` at a time, and, with `grads`, its
    gradient with respect to every branch's a and E. Peak memory is one (rows, N) tensor a branch.

    branches: [(a, E, log_w)] for the ID and the image branch, a = unit(h)/τ (P, d) the positions,
    E (N, d) the item matrix with unit rows, log_w = log α (ID) or log(1-α) (image).

    With s = a·E^T (Eq. 2) and softmax(s) = P_b (Eq. 3/4), for one position with target y:
        -log P_y = -log Σ_b w_b·P_b,y                                          (Eq. 5)
        d(-log P_y)/ds_b = r_b·(P_b - onehot_y),   r_b = w_b·P_b,y / P_y    (r_id + r_img = 1)
        d/da_b = r_b·(P_b - onehot_y)·E_b   and   d/dE_b = Σ_t (P_b - onehot_y)^T·(r_b·a_b)
    """
    total = torch.zeros((), device=target.device)
    dA = [torch.zeros_like(a) if grads else None for a, _, _ in branches]
    dE = [torch.zeros_like(E) if grads and E.requires_grad else None for _, E, _ in branches]
    buffers = [torch.empty(min(rows, len(target)), E.shape[0], device=E.device) for _, E, _ in branches]
    for i in range(0, target.shape[0], rows):
        y = target[i:i + rows]  # (c,)
        log_wP_y, P = [], []
        for (a, E, log_w), buffer in zip(branches, buffers):
            s = _logits(a[i:i + rows], E, buffer[:len(y)])  # (c, N) logits of this chunk
            s_y = s.gather(1, y[:, None])  # (c, 1) the target's logit
            m, Z = _exp_(s, temperature)  # s <- exp(s - m)
            # (Eq. 3/4) log P_b,y = s_y - m - log Z;  log w_b·P_b,y
            log_wP_y.append(log_w + (s_y - m - Z.log())[:, 0])  # (c,)
            P.append(s.div_(Z) if grads else None)  # (c, N) P_b = softmax(s), in place
        # (Eq. 5) log P_y = log Σ_b w_b·P_b,y;  (Eq. 6) Σ_t -log P_y
        log_P_y = torch.logsumexp(torch.stack(log_wP_y), dim=0)  # (c,)
        total = total - log_P_y.sum()
        if not grads:
            continue
        for b, (a, E, _) in enumerate(branches):
            r = (log_wP_y[b] - log_P_y).exp()[:, None]  # (c, 1) r_b = w_b·P_b,y / P_y
            G = P[b]
            G[torch.arange(len(y), device=y.device), y] -= 1  # (c, N) P_b - onehot_y, in place
            # d/da_b = r_b·(P_b - onehot_y)·E_b
            dA[b][i:i + rows] = r * (G @ E)  # (c, d)
            if dE[b] is not None:
                # d/dE_b += (P_b - onehot_y)^T·(r_b·a_b)
                if torch.is_autocast_enabled(E.device.type):
                    dE[b] += G.T @ (r * a[i:i + rows])  # the product in the autocast dtype, the sum in fp32
                else:
                    dE[b].addmm_(G.T, r * a[i:i + rows])  # (N, d), accumulated in place
    return total, dA, dE


def _weighted(log_w: tuple[float, float]) -> list[int]:
    """The branches (0 = ID, 1 = image) that Eq. 5 weighs with more than 0: α = 0 or 1 leaves one."""
    return [b for b in (0, 1) if log_w[b] > -math.inf]


class _FusedNLL(torch.autograd.Function):
    """Autograd for `_nll_chunks`. The loss is a scalar, so its whole gradient is formed in the forward
    pass while each chunk's P_b is at hand, and backward only scales it by the incoming gradient: every
    logit is computed once, and what is kept between the passes is O(P·d + N·d), never O(P·N)."""

    @staticmethod
    def forward(ctx, a_id, E_id, a_img, E_img, target, log_w, rows, temperature):
        kept = _weighted(log_w)
        branches = [((a_id, E_id), (a_img, E_img))[b] + (log_w[b],) for b in kept]
        total, dA, dE = _nll_chunks(branches, target, rows, True, temperature)
        ctx.grads = [None] * 4  # d/d a_id, E_id, a_img, E_img
        for b, dA_b, dE_b in zip(kept, dA, dE):
            ctx.grads[2 * b], ctx.grads[2 * b + 1] = dA_b, dE_b
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        grads, ctx.grads = ctx.grads, None
        return (*(None if d is None else g * d for d in grads), None, None, None, None)


def nll(h_id: torch.Tensor, E_id: torch.Tensor, h_img: torch.Tensor | None, E_img: torch.Tensor | None,
        target: torch.Tensor, alpha: float, temperature: float, chunk: int) -> torch.Tensor:
    """Σ_t -log P(target_t | S) over P positions (the sum of Eq. 6); E_id, E_img with unit rows.

    Positions are scored in chunks of chunk // N, whose (rows, N) logits are never kept: the gradient
    is formed as each chunk is scored (`_nll_chunks`), so peak memory does not grow with P x N. The
    result and the gradients equal those of the plain computation (`_nll_sum`) up to float rounding.
    """
    rows = max(1, chunk // E_id.shape[0])
    # (Eq. 2) both branches compare a = unit(h)/τ with the unit rows of E
    a_id = unit(h_id) / temperature  # (P, q)
    if h_img is None:  # ID branch only: P = P_id
        a_img, log_w = None, (0.0, -math.inf)
    else:
        a_img = unit(h_img) / temperature  # (P, e)
        log_w = (_log(alpha), _log(1.0 - alpha))  # (Eq. 5) weights α and 1-α, as logarithms
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (a_id, E_id, a_img, E_img)):
        return _FusedNLL.apply(a_id, E_id, a_img, E_img, target, log_w, rows, temperature)
    branches = [((a_id, E_id), (a_img, E_img))[b] + (log_w[b],) for b in _weighted(log_w)]
    return _nll_chunks(branches, target, rows, False, temperature)[0]


# ----------------------------------------------------------------------------- the model


class IFCDSR(nn.Module):
    def __init__(self, cfg: Config, num_x: int, num_y: int, E_img: torch.Tensor | None = None):
        super().__init__()
        cfg.check()
        assert cfg.use_image == (E_img is not None), "pass E_img exactly when cfg.use_image"
        self.cfg, self.num_x, self.num_y = cfg, num_x, num_y
        self.N = self.pad = num_x + num_y
        self.views = VIEWS if cfg.multi_attention else ("xy",)
        # §3.1.1: E_id, a learnable (N, q) item matrix (+ one zero row for padding)
        self.E_id = nn.Embedding(self.N + 1, cfg.q, padding_idx=self.pad)
        # Note: init not stated in the paper; rows of norm ~1 (std q^-1/2) rather than torch's N(0, 1),
        # so that Adam's steps of ~lr per coordinate turn the directions that Eq. 2 compares quickly
        nn.init.normal_(self.E_id.weight, std=cfg.q ** -0.5)
        with torch.no_grad():
            self.E_id.weight[self.pad].zero_()
        self.enc_id = nn.ModuleDict({v: AttentionEncoder(cfg.q, cfg) for v in self.views})
        if cfg.use_image:
            assert E_img.shape[0] == self.N, f"E_img has {E_img.shape[0]} rows, expected N = {self.N}"
            # §3.1.1: E_img, the frozen (N, e) CLIP image matrix: a buffer, never a parameter
            self.register_buffer("E_img", torch.cat([E_img.float(), E_img.new_zeros(1, E_img.shape[1])]),
                                 persistent=False)  # not in checkpoints: it is the data's
            self.register_buffer("E_img_unit", unit(self.E_img[:-1]), persistent=False)  # normalised once: frozen
            self.enc_img = nn.ModuleDict({v: AttentionEncoder(E_img.shape[1], cfg) for v in self.views})
        else:
            self.E_img, self.enc_img = None, None

    def encode(self, seq: torch.Tensor, view: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """seq (B, L) item ids of one view -> (H_id (B, L, q), H_img (B, L, e) or None) by Eq. 1."""
        is_pad = seq == self.pad
        F_id = self.E_id(seq)  # (B, L, q): E_id rows in sequence order
        H_id = self.enc_id[view](F_id, is_pad)  # (Eq. 1) H_id = Attention(F_id)
        if self.E_img is None:
            return H_id, None
        F_img = self.E_img[seq]  # (B, L, e): E_img rows in sequence order, no projection
        return H_id, self.enc_img[view](F_img, is_pad)  # (Eq. 1) H_img = Attention(F_img)

    def trim(self, seq: torch.Tensor, *aligned: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Drop the leading columns that are padding in every row (left padding: the items are at
        the end). Positions count from each sequence's first item, so no output changes."""
        width = max(1, int((seq != self.pad).sum(1).max()))
        return tuple(t[:, -width:] for t in (seq, *aligned))

    def item_matrices(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """E_id and E_img without the padding row, rows normalised for Eq. 2: (N, q), (N, e)."""
        return unit(self.E_id.weight[:-1]), None if self.E_img is None else self.E_img_unit

    def loss(self, inputs, targets) -> tuple[torch.Tensor, dict[str, float]]:
        """(Eq. 7) L = L^X + λ1·L^Y + λ2·L^{X+Y} (X the target domain) for one batch of Views.

        Note: each L^v is the mean of -log P^v over the batch's prediction positions, as in C2DSR's
        cross-entropy; Eq. 6 writes a sum, which only rescales each view's term.
        """
        cfg = self.cfg
        E_id, E_img = self.item_matrices()
        total, parts = 0.0, {}
        for view, weight in cfg.view_weights().items():
            seq, nxt = self.trim(getattr(inputs, view), getattr(targets, view))
            H_id, H_img = self.encode(seq, view)
            keep = nxt != self.pad  # every next-item position of the view (Eq. 6's Σ over t)
            h_img = None if H_img is None else H_img[keep]  # (P, e)
            # (Eq. 6) L^v = Σ_t -log P^v(v_{t+1} | S), here averaged over the P positions
            L_v = nll(H_id[keep], E_id, h_img, E_img, nxt[keep], cfg.alpha, cfg.temperature,
                      cfg.score_chunk) / keep.sum().clamp(min=1)
            total = total + weight * L_v
            parts[view] = L_v.item()
        return total, parts

    @torch.no_grad()
    def score(self, history, items: slice = slice(None)) -> torch.Tensor:
        """(Eq. 8) P(x_i | S) = P^X + λ1·P^Y + λ2·P^{X+Y} for the items in `items` (all N by default)
        -> (B, |items|); the softmax of Eq. 3/4 still runs over all N items.

        Each view is read at its last position (the most recent item, Eq. 1's h); an empty
        view contributes the uniform distribution 1/N.
        Note: computed as written, in probability space (fp32): an item's P underflows to 0 only if
        its logit is > 87 below the row's best in every branch, impossible for τ > 2/87 (cosines
        span 2/τ). Eq. 3-5 are formed in place in one (B, N) tensor.
        """
        cfg = self.cfg
        E_id, E_img = self.item_matrices()
        B = len(history.xy)
        s = torch.empty(B, self.N, device=E_id.device)  # (B, N) one branch's logits, then exp(logits - m)
        total = torch.zeros_like(s[:, items])  # (B, |items|) the sum of Eq. 8
        uniform = torch.zeros(B, 1, device=E_id.device)  # (B, 1) the mass of empty views, 1/N each item
        for view, weight in cfg.view_weights().items():
            if weight == 0:
                continue
            (seq,) = self.trim(getattr(history, view))
            H_id, H_img = self.encode(seq, view)
            empty = (seq == self.pad).all(dim=1, keepdim=True)  # (B, 1)
            uniform += weight / self.N * empty
            # (Eq. 5) P^v = α·P_id + (1-α)·P_img, added to the total with the view's weight (Eq. 8)
            for H, E, w in ((H_id, E_id, cfg.alpha), (H_img, E_img, 1.0 - cfg.alpha)):
                if H is None or w == 0:
                    continue
                _logits(unit(H[:, -1]) / cfg.temperature, E, s)  # (Eq. 2) s = Sim(h, E)
                _, Z = _exp_(s, cfg.temperature)  # (Eq. 3/4) P_b = s / Z
                total.addcmul_(s[:, items], weight * w * ~empty / Z)  # += λ_v·w_b·P_b, for non-empty views
        return total.add_(uniform)  # (B, |items|)

    def target_items(self) -> slice:
        """The global ids of the target domain: Eq. 9 ranks only these."""
        return slice(0, self.num_x) if self.cfg.target == "X" else slice(self.num_x, self.N)

    def recommend(self, history) -> torch.Tensor:
        """(Eq. 9) argmax over x_i in the target domain of P(x_i | S) -> (B,) global item ids."""
        target = self.target_items()
        return self.score(history, target).argmax(dim=1) + target.start
