"""Eq. 2-6 and Eq. 8 with bounded memory: the code IFCDSR runs when (positions × N) logits are large.

`ifcdsr.py` holds the plain version of these equations (`similarity`, `log_prob`, `IFCDSR.loss`,
`IFCDSR.score`) and calls this module when a view's logits would not fit in half of `IFCDSR.chunk()`
(Movie-Book and Food-Kitchen size; never on the demo or in most tests of the model), and always on CUDA.
Both give the same numbers up to float rounding (test_fused_loss.py).

It holds the two bounded twins, the training loss and the test-time Eq. 8:
    nll       Σ_t -log P(y_t | S) over P positions (the sum of Eq. 6) and its gradient, scoring `rows`
              positions at a time into one reused (rows, n) buffer, n the items of the view's softmax
    view_sum  Eq. 8's Σ_v λ_v·P^v for a batch of histories, Eq. 3-5 formed in place in the same buffer
And `nll_dot`, the same chunked loss for the sequence baselines' dot-product softmax (baselines.py).

The derivation of the gradient. With a = unit(h)/τ and unit rows of E, the logits are s = a·E^T
(Eq. 2), P_b = softmax(s_b) for the ID and the image branch b (Eq. 3/4) and, for one position with
target y,
    -log P_y = -log Σ_b w_b·P_b,y                                  (Eq. 5, w_id = α, w_img = 1-α)
    d(-log P_y)/ds_b = r_b·(P_b - onehot_y),   r_b = w_b·P_b,y / P_y    (r_id + r_img = 1)
    d/da_b = r_b·(P_b - onehot_y)·E_b,   d/dE_b = Σ_t (P_b - onehot_y)^T·(r_b·a_b)
The loss is a scalar, so its whole gradient is formed in the forward pass while each chunk's P_b is
at hand; backward only scales it. Every logit is computed once, and what is kept between the passes
is O(P·d + N·d), never O(P·N).

Dimension letters: P positions, c positions of one chunk, B batch, N items, d a branch's width.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F


def log_weight(w: float) -> float:
    """log w of a weight of Eq. 5 (α or 1-α); log 0 = -inf, so that a branch of weight 0 drops out."""
    return math.log(w) if w > 0 else -math.inf


_SCRATCH: dict = {}  # (slot, device, dtype) -> a flat buffer, kept between calls


def _scratch(slot: int, rows: int, cols: int, like: torch.Tensor) -> torch.Tensor:
    """A (rows, cols) buffer for one branch's logits in `like`'s dtype and device, reused by every call: on
    CPU a fresh buffer of this size (134 MB at Movie-Book size) is page-faulted in on first touch, which costs
    about a third of the product that fills it, once per view and step. Nothing returned refers to it."""
    key = (slot, like.device, like.dtype)
    buffer = _SCRATCH.get(key)
    if buffer is None or buffer.numel() < rows * cols:
        _SCRATCH.pop(key, None)  # freed before the larger one is made
        buffer = _SCRATCH[key] = torch.empty(rows * cols, device=like.device, dtype=like.dtype)
    return buffer[:rows * cols].view(rows, cols)


def _logits(a: torch.Tensor, E: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """(Eq. 2) s = a·E^T, written into `out` (c, n) in E's dtype: fp32, or autocast's (bf16 on CUDA), in which
    the logits are then exponentiated in place (the accuracy that needs fp32 is kept elsewhere: the target's
    logit and Z, in `_nll_chunks`). `out` is reused for every chunk: on CPU a fresh (c, n) tensor costs page
    faults that take as long as the product itself."""
    return torch.mm(a.to(E.dtype), E.T, out=out)


def _exp_(s: torch.Tensor, bound: float) -> torch.Tensor:
    """s <- exp(s - m) in place; returns m (c, 1), so that (Eq. 3/4) softmax(s) = s / Z with
    Z = Σ exp(s - m) and no second (c, N) tensor. `bound` bounds every logit, |s| <= bound.

    Eq. 2 gives bound = 1/τ. For a bound <= 60, exp(s) lies in [e^-60, e^60] and Z stays far inside fp32's
    range, so m = 0 and the two passes of a row maximum are saved; otherwise (a small τ, or the baselines'
    unbounded dot products, bound = inf) m is the row maximum, as in a textbook softmax. Either way the
    result is the same up to rounding.
    """
    if bound <= 60:
        m = s.new_zeros(len(s), 1)
    else:
        m = s.amax(dim=-1, keepdim=True)
        s.sub_(m)
    s.exp_()
    return m


def _nll_chunks(branches, target: torch.Tensor, rows: int, bound: float, items: slice, dE=None,
                scale: float = 1.0):
    """Σ_t -log P(y_t | S) for P positions scored `rows` at a time and, with `dE`, `scale` times its gradient
    with respect to every branch's a (returned) and E (added into dE[b], an (N, d) buffer or None for a
    branch whose E takes no gradient) (module docstring). Peak memory is one (rows, n) buffer, and one more
    for each further branch whose E takes a gradient (none in IFCDSR: E_img is frozen).

    branches: [(a, E, E_p, log_w)]: a (P, d), E (N, d) (in IFCDSR a = unit(h)/τ and E has unit rows; in
    `nll_dot` both are plain), E_p the same matrix in the products' dtype (E itself, or its bf16 copy under
    autocast), log_w = log α or log(1-α); the softmax runs over the rows `items` of E, and `target` counts
    from its first.

    Each chunk's (c, n) buffer is walked twice besides the products that read it: the logits are
    exponentiated in place (G = exp(s - m)) and summed (Z, a read-only pass); the rest folds into the
    products, with P_b = G / Z:
        (P_b - onehot_y)·E = (G·E) / Z - E_y          so d/da_b needs no pass of its own
        (P_b - onehot_y)^T·v = G^T·(v / Z) - v at the rows y (a scatter-add of c rows), for d/dE_b
    In bf16 the buffer's values carry 8 bits; what the loss reads exactly is kept in fp32: the target's logit
    (a·E_y, c dot products), Z (summed in fp32), the gradients' sums.
    """
    total, grads = torch.zeros((), device=target.device), dE is not None
    dA = [torch.zeros_like(a) if grads else None for a, *_ in branches]
    # d/dE for all N rows, filled at `items`: a gradient of E[items] would cost autograd a second (N, d) tensor
    dE = dE if grads else [None] * len(branches)
    dE_items = [None if d is None else d[items] for d in dE]
    branches = [(a, E[items], E_p[items], log_w) for a, E, E_p, log_w in branches]  # (n, d) the softmax's items
    # A branch whose G is needed after the loop below (for d/dE) keeps its buffer; the others are done with
    # theirs once G·E and Z are taken. So those go first, all in buffer 0, and each keeping branch takes the
    # next free buffer: one buffer in IFCDSR.
    order = sorted(range(len(branches)), key=lambda b: dE[b] is not None)
    for i in range(0, target.shape[0], rows):
        c, y = slice(i, i + rows), target[i:i + rows]  # this chunk's positions, their targets (c,)
        log_wP_y, G, GE, Z = ([None] * len(branches) for _ in range(4))
        slot = 0
        for b in order:
            a, E, E_p, log_w = branches[b]
            log_P_y, G[b], GE[b], Z[b] = _branch_chunk(a[c], E, E_p, y, _scratch(slot, len(y), len(E), E_p),
                                                       bound, grads)
            slot += dE[b] is not None
            log_wP_y[b] = log_w + log_P_y  # (c,) log w_b·P_b,y
        # (Eq. 5) log P_y = log Σ_b w_b·P_b,y;  (Eq. 6) Σ_t -log P_y
        log_P_y = torch.logsumexp(torch.stack(log_wP_y), dim=0)  # (c,)
        total = total - log_P_y.sum()
        if not grads:
            continue
        for b, (a, E, _, _) in enumerate(branches):
            r = scale * (log_wP_y[b] - log_P_y).exp()[:, None]  # (c, 1) r_b = w_b·P_b,y / P_y, times scale
            _add_gradient(a[c], E, y, r, G[b], GE[b], Z[b], dA[b][c], dE_items[b])
    return total, dA


def _branch_chunk(a: torch.Tensor, E: torch.Tensor, E_p: torch.Tensor, y: torch.Tensor, out: torch.Tensor,
                  bound: float, grads: bool) -> tuple:
    """One branch on one chunk of c positions: a (c, d), E and E_p (n, d) the softmax's items (E_p in the
    products' dtype), y (c,) the targets; `out` (c, n) takes the logits. -> (log P_b,y (c,), G (c, n) = `out`
    holding exp(s - m), G·E (c, d) with `grads` else None, Z (c, 1) in fp32)."""
    s = _logits(a, E_p, out)  # (c, n) this chunk's logits
    if s.dtype == torch.float32:
        s_y = s.gather(1, y[:, None])  # (c, 1) the target's logit
    else:  # in fp32: the loss reads it directly
        s_y = (a * E[y]).sum(dim=-1, keepdim=True)  # (c, 1)
    m = _exp_(s, bound)  # s <- G = exp(s - m)
    Z = s.sum(dim=-1, keepdim=True, dtype=torch.float32)  # (c, 1) Z = Σ_i G_i, in fp32
    GE = s @ E_p if grads else None  # (c, d) G·E
    # (Eq. 3/4) log P_b,y = s_y - m - log Z
    return (s_y - m - Z.log())[:, 0], s, GE, Z


def _add_gradient(a: torch.Tensor, E: torch.Tensor, y: torch.Tensor, r: torch.Tensor, G: torch.Tensor,
                  GE: torch.Tensor, Z: torch.Tensor, dA: torch.Tensor, dE: torch.Tensor | None) -> None:
    """One branch's gradient on one chunk (module docstring), from `_branch_chunk`'s G, G·E and Z and
    r = r_b (c, 1): d/da_b written into dA (c, d), d/dE_b added to dE (n, d) unless E takes none (None)."""
    # d/da_b = r_b·(P_b - onehot_y)·E_b = r_b·((G·E_b) / Z - E_b,y)
    dA.copy_(r * (GE / Z - E[y]))  # (c, d)
    if dE is None:
        return
    ra = r * a  # (c, d) r_b·a_b
    # d/dE_b += (P_b - onehot_y)^T·(r_b·a_b) = G^T·(r_b·a_b / Z) - (r_b·a_b at the rows y)
    if G.dtype == dE.dtype:
        dE.addmm_(G.T, ra / Z)  # (n, d), accumulated in place
    else:  # the product in G's dtype, the sum in fp32
        dE += G.T @ (ra / Z).to(G.dtype)
    dE.index_add_(0, y, -ra)


def _weighted(log_w: tuple[float, float]) -> list[int]:
    """The branches (0 = ID, 1 = image) that Eq. 5 weighs with more than 0: α = 0 or 1 leaves one."""
    return [b for b in (0, 1) if log_w[b] > -math.inf]


class ViewNLL(NamedTuple):
    """One view's part of Eq. 7 for `nll_views`: its positions, their targets, its softmax's items, its weight."""
    h_id: torch.Tensor  # (P, q) the ID encoder's output at the view's P next-item positions
    h_img: torch.Tensor | None  # (P, e) the image encoder's, or None without the image branch
    target: torch.Tensor  # (P,) each position's next item, counted from the first of `items`
    items: slice  # the rows of E over which the view's softmax runs (Eq. 3/4)
    scale: float  # the view's weight in Eq. 7 over its normalisation (Eq. 6's B·L slots, or its P)


def _view_nll(view: ViewNLL, a_v: list, E_id, E_img, products, log_w, bound: float, chunk: int, dE=None):
    """One view's Σ_t by `_nll_chunks`, chunk // n positions at a time; a_v = [a_id] or [a_id, a_img], whose
    logits are at most `bound` in size (1/τ: Eq. 2). With dE
    (E_id's (N, q) gradient buffer), scale_v times the gradient: into dE, and returned as {branch: d/da}."""
    a_v, kept = a_v + [None], _weighted(log_w)
    branches = [((a_v[0], E_id, products[0]), (a_v[1], E_img, products[1]))[b] + (log_w[b],) for b in kept]
    rows = max(1, chunk // len(range(E_id.shape[0])[view.items]))
    grads = None if dE is None else [dE if b == 0 else None for b in kept]
    nll, dA = _nll_chunks(branches, view.target, rows, bound, view.items, grads, view.scale)
    return nll, dict(zip(kept, dA))


class _FusedNLL(torch.autograd.Function):
    """Autograd for `_nll_chunks` over the views of a batch: Σ_v scale_v·nll_v and each nll_v. The gradient is
    formed in the forward pass, every view's into the same (N, q) gradient of E_id; backward scales it.
    Inputs: E_id, then each view's a_id (and a_img, with the image branch), then the rest as one tuple (the
    tensors first, as autograd lists them)."""

    @staticmethod
    def forward(ctx, E_id, *args):
        *a, (E_img, products, views, log_w, bound, chunk) = args
        per_view = len(a) // len(views)  # 2 with the image branch, else 1
        dE = torch.zeros_like(E_id)
        total, nlls, ctx.grads = torch.zeros((), device=E_id.device), [], [dE] + [None] * len(a)
        for k, view in enumerate(views):
            nll, dA = _view_nll(view, a[per_view * k:per_view * (k + 1)], E_id, E_img, products, log_w,
                                bound, chunk, dE)
            total = total + view.scale * nll
            nlls.append(nll)
            for b, dA_b in dA.items():
                ctx.grads[1 + per_view * k + b] = dA_b
        nlls = torch.stack(nlls)
        ctx.mark_non_differentiable(nlls)
        return total, nlls

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g, _):
        grads, ctx.grads = ctx.grads, None
        # in place: the gradients are this node's own, and a fresh (N, d) result would cost page faults on CPU
        return (*(None if d is None else d.mul_(g) for d in grads), None)


def _branch_inputs(h_id, h_img, alpha: float, temperature: float):
    """(Eq. 2) a = unit(h)/τ of each branch (None for a missing image branch), and (Eq. 5) log α, log(1-α)."""
    a_id = F.normalize(h_id, dim=-1) / temperature  # (P, q)
    if h_img is None:  # ID branch only: P = P_id
        return a_id, None, (0.0, -math.inf)
    return a_id, F.normalize(h_img, dim=-1) / temperature, (log_weight(alpha), log_weight(1.0 - alpha))  # (P, e)


def nll_views(views: list[ViewNLL], E_id: torch.Tensor, E_img: torch.Tensor | None, alpha: float,
              temperature: float, chunk: int, products: tuple | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(Eq. 6/7) Σ_v scale_v·Σ_t -log P^v(target_t | S) and each view's Σ_t (V,): E_id, E_img (N, d) with unit
    rows, E_img frozen; `products`: E_id and E_img as the products read them (under autocast, cast once by
    the caller; default: as given). Every view's gradient goes into one (N, q) gradient of E_id, so E_id's
    backward runs once a step, not once per view.

    Positions are scored in chunks of chunk // n (n the view's items), whose (rows, n) logits are never kept,
    so peak memory does not grow with P × n. Value and gradients equal those of `ifcdsr.log_prob` on
    E[items] + autograd up to float rounding.
    """
    if E_img is not None and E_img.requires_grad:
        raise ValueError("fused_loss: E_img is frozen (IFCDSR's image matrix takes no gradient)")
    products = products or (E_id, E_img)
    a, log_w = [], None
    for view in views:
        a_id, a_img, log_w = _branch_inputs(view.h_id, view.h_img, alpha, temperature)
        a += [a_id] if a_img is None else [a_id, a_img]
    per_view = len(a) // len(views)
    if torch.is_grad_enabled() and any(t.requires_grad for t in [E_id, *a]):
        return _FusedNLL.apply(E_id, *a, (E_img, products, views, log_w, 1 / temperature, chunk))
    nlls = torch.stack([_view_nll(view, a[per_view * k:per_view * (k + 1)], E_id, E_img, products, log_w,
                                  1 / temperature, chunk)[0] for k, view in enumerate(views)])
    return sum(view.scale * nll for view, nll in zip(views, nlls)), nlls


def nll(h_id: torch.Tensor, E_id: torch.Tensor, h_img: torch.Tensor | None, E_img: torch.Tensor | None,
        target: torch.Tensor, alpha: float, temperature: float, chunk: int, items: slice = slice(None),
        products: tuple | None = None) -> torch.Tensor:
    """Σ_t -log P(target_t | S) over P positions (the sum of Eq. 6) of one view: `nll_views` of it alone."""
    return nll_views([ViewNLL(h_id, h_img, target, items, 1.0)], E_id, E_img, alpha, temperature, chunk,
                     products)[0]


def nll_dot(h: torch.Tensor, E: torch.Tensor, target: torch.Tensor, items: slice, chunk: int) -> torch.Tensor:
    """Σ_t -log softmax(h_t·E[items]^T)[target_t], h (P, d), E (N, d): the sequence baselines' cross-entropy
    (baselines.py) by the same chunks and gradient as Eq. 6, on one branch whose logits are plain dot
    products (no unit rows, no τ, so no bound: each chunk's row maximum is subtracted)."""
    view = ViewNLL(h, None, target, items, 1.0)
    if torch.is_grad_enabled() and (h.requires_grad or E.requires_grad):
        return _FusedNLL.apply(E, h, (None, (E, None), [view], (0.0, -math.inf), math.inf, chunk))[0]
    return _view_nll(view, [h], E, None, (E, None), (0.0, -math.inf), math.inf, chunk)[0]


class _UnitRows(torch.autograd.Function):
    """unit(E) = E / max(‖E‖, ε) by rows, as `F.normalize`, with a backward of three passes over E (autograd's
    own takes about ten): d/dE = (g - u·(u·g)) / ‖E‖, u = unit(E), and g / ε for a row of norm <= ε."""

    @staticmethod
    def forward(ctx, E):
        norm = torch.linalg.vector_norm(E, dim=-1, keepdim=True).clamp_min_(1e-12)  # (N, 1)
        u = E / norm
        ctx.save_for_backward(u, norm)
        return u

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        u, norm = ctx.saved_tensors
        along = torch.linalg.vecdot(u, g)[:, None].masked_fill_(norm <= 1e-12, 0)  # (N, 1) u·g; 0 where clamped
        return torch.addcmul(g, u, along, value=-1).div_(norm)


def unit_rows(E: torch.Tensor) -> torch.Tensor:
    """E's rows normalised for Eq. 2 (N, d), the same values as `ifcdsr.unit`, with a cheaper gradient."""
    return _UnitRows.apply(E)


@torch.no_grad()
def view_sum(views, E_id: torch.Tensor, E_img: torch.Tensor | None, alpha: float, temperature: float,
          items: slice, chunk: int) -> torch.Tensor:
    """(Eq. 8) P(x_i | S) = Σ_v λ_v·P^v(x_i | S) for the items in `items` -> (B, |items|); each view's
    softmax (Eq. 3/4) runs over its own items, as in `IFCDSR.score`; chunk // |own| histories at a time.

    views: an `ifcdsr.ViewScores` per view (its λ_v, its softmax's items, the columns it covers, its h at the
    last position, and which histories it has no item for); a view without items contributes 1/|own|.
    Note: computed as written, in probability space (fp32): an item's P underflows to 0 only if its
    logit is > 87 below the row's best in every branch, impossible for τ > 2/87 (cosines span 2/τ).
    """
    B = len(views[0].h_id)
    total = torch.zeros(B, items.stop - items.start, device=E_id.device)  # (B, |items|) the sum of Eq. 8
    for view in views:
        weight, own, into, src, h_id, h_img, empty = view  # the fields of ifcdsr.ViewScores
        if weight == 0:
            continue
        n = own.stop - own.start
        rows = max(1, chunk // n)
        for i in range(0, B, rows):
            c = slice(i, i + rows)
            s = _scratch(0, len(empty[c]), n, total)  # (c, |own|) logits, then exp(logits - m)
            into_c = total[c, into]  # (c, |covered|) a view of the result
            into_c += weight / n * empty[c]  # the uniform mass of an empty view
            # (Eq. 5) P^v = α·P_id + (1-α)·P_img (the ID branch alone: P_id), added with the view's weight (Eq. 8)
            for h, E, w in ((h_id, E_id, alpha if h_img is not None else 1.0), (h_img, E_img, 1.0 - alpha)):
                if h is None or w == 0:
                    continue
                _logits(F.normalize(h[c], dim=-1) / temperature, E[own], s)  # (Eq. 2) s = Sim(h, E)
                _exp_(s, 1 / temperature)
                Z = s.sum(dim=-1, keepdim=True)  # (Eq. 3/4) P_b = s / Z
                into_c.addcmul_(s[:, src], weight * w * ~empty[c] / Z)  # += λ_v·w_b·P_b, for non-empty views
    return total
