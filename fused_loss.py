"""Eq. 2-8 in bounded memory for (positions × N) logits too large at once (`plain`), and the device policy: `nll_views`
(Eq. 6/7 and its gradient), `view_sum` (Eq. 8), `nll_dot` (baselines), `chunk` logits at a time in one buffer, equal to
the plain code (tests/test_fused_loss.py). T positions (c a chunk's), B batch, N items (n a softmax's), d a width.

The loss is a scalar: its gradient is formed in the forward pass while each chunk's P_b is at hand; backward scales
it. With a = unit(h)/τ, s = a·E^T (Eq. 2), P_b = softmax(s_b) (Eq. 3/4), a target y, G = exp(s - m) and Z = Σ G:
    r_b = w_b·P_b,y / P_y  (Eq. 5: w_id = α, w_img = 1-α; r_id + r_img = 1)
    d/da_b = r_b·(P_b - onehot_y)·E_b = (G·E_b)·r_b/Z - r_b·E_b,y
    d/dE_b = Σ_t (P_b - onehot_y)^T·(r_b·a_b) = G^T·(a_b·r_b/Z) - (r_b·a_b at the rows y)
so O(T·d + N·d) is kept between the passes, never O(T·N). In bf16 the target's logit, Z and the sums stay fp32."""
import functools, math
from typing import NamedTuple

import torch


def log_weight(w: float) -> float:
    """log w of a weight of Eq. 5 (α or 1-α); log 0 = -inf, so that a branch of weight 0 drops out."""
    return math.log(w) if w > 0 else -math.inf


_SCRATCH: dict = {}  # (device, dtype) -> a flat buffer, kept between calls


def _scratch(rows: int, cols: int, like: torch.Tensor) -> torch.Tensor:
    """A (rows, cols) buffer like `like`, reused by every call: a fresh one on a CPU costs a third of the product."""
    key = (like.device, like.dtype)
    if key not in _SCRATCH or _SCRATCH[key].numel() < rows * cols:
        _SCRATCH.pop(key, None)  # freed before the larger one is made
        _SCRATCH[key] = torch.empty(rows * cols, device=like.device, dtype=like.dtype)
    return _SCRATCH[key][:rows * cols].view(rows, cols)


def _logits(a: torch.Tensor, E: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """(Eq. 2) s = a·E^T, written into `out` (c, n) in E's dtype: fp32, or autocast's (bf16 on CUDA)."""
    return torch.mm(a.to(E.dtype), E.T, out=out)


def _exp_(s: torch.Tensor, bound: float) -> torch.Tensor | None:
    """s <- exp(s - m) in place (Eq. 3/4's numerators) -> m (c, 1): None (0) while exp(bound = 1/τ <= 60) fits fp32."""
    m = None if bound <= 60 else s.amax(dim=-1, keepdim=True)
    (s if m is None else s.sub_(m)).exp_()
    return m


def _nll_chunks(branches: list, target: torch.Tensor, rows: int, bound: float, scale: float | None) -> torch.Tensor:
    """Σ_t log P(y_t | S) over a view's positions, `rows` at a time, and with a `scale` its negative's gradient, scaled.
    branches: [(a (T, d), E (n, d) the softmax's items, a_p, E_p as the products read them, log w_b, dE (n, d) to add
    d/dE into or None, dA (T, d) for d/da)]; target (T,) from E's first row. One shared buffer: only the last dE."""
    log_P = []  # each chunk's Σ_t log P_y
    for i in range(0, max(len(target), 1), rows):  # a view without positions: one empty chunk, Σ = 0
        c, y = slice(i, i + rows), target[i:i + rows]  # this chunk's positions, their targets (c,)
        log_wP_y, kept = [], []
        for a, E, a_p, E_p, log_w, _, _ in branches:
            s = _logits(a_p[c], E_p, _scratch(len(y), len(E), E_p))  # (c, n) the logits
            E_y = E[y]  # (c, d) the targets' rows, and s_y (c, 1) their logits, in fp32 (the loss reads them directly)
            s_y = s.gather(1, y[:, None]) if s.dtype == torch.float32 else (a[c] * E_y).sum(dim=-1, keepdim=True)
            m = _exp_(s, bound)  # s <- G = exp(s - m)
            Z = s.sum(dim=-1, keepdim=True, dtype=torch.float32)  # (c, 1) Z = Σ_i G_i, in fp32
            log_P_y = s_y - Z.log() if m is None else s_y - m - Z.log()  # (Eq. 3/4) log P_b,y = s_y - m - log Z
            log_wP_y.append(log_w + log_P_y[:, 0])  # (c,) log w_b·P_b,y
            kept.append((E_y, s, s @ E_p if scale is not None else None, Z))  # with G·E (c, d) for the gradient
        log_wP_y = torch.stack(log_wP_y)  # (branches, c)
        log_P_y = torch.logsumexp(log_wP_y, dim=0)  # (c,) (Eq. 5) log P_y = log Σ_b w_b·P_b,y
        log_P.append(log_P_y.sum())  # (Eq. 6) Σ_t log P_y
        if scale is None:
            continue
        r = (log_wP_y - log_P_y).exp_().mul_(scale)[:, :, None]  # (branches, c, 1) r_b = w_b·P_b,y / P_y, scaled
        for (a, _, _, _, _, dE, dA), r_b, (E_y, G, GE, Z) in zip(branches, r, kept):
            rz = r_b / Z  # (c, 1) r_b / Z
            torch.mul(GE, rz, out=dA[c]).addcmul_(r_b, E_y, value=-1)  # (c, d) d/da_b = (G·E_b)·r_b/Z - r_b·E_b,y
            if dE is None:
                continue
            if G.dtype == dE.dtype:  # d/dE_b += G^T·(a_b·r_b/Z) - (r_b·a_b at the rows y)
                dE.addmm_(G.T, a[c] * rz)  # (n, d) in place
            else:  # the product in G's dtype, the sum in fp32
                dE += G.T @ (a[c] * rz).to(G.dtype)
            dE.index_add_(0, y, a[c] * r_b, alpha=-1)
    return sum(log_P[1:], log_P[0])


class ViewNLL(NamedTuple):  # one view's part of Eq. 7, for `nll_views`
    h_id: torch.Tensor  # (T, q) the ID encoder's output at the view's T next-item positions
    h_img: torch.Tensor | None  # (T, e) the image encoder's, or None without the image branch
    target: torch.Tensor  # (T,) each position's next item, counted from the first of `items`
    items: slice  # the rows of E over which the view's softmax runs (Eq. 3/4)
    scale: float  # the view's weight in Eq. 7 over its normalisation (Eq. 6's B·L slots, or its T)


class _FusedNLL(torch.autograd.Function):
    """Σ_v scale_v·nll_v and each nll_v (`_nll_chunks`) of the inputs E_id, a, the rest; forward forms the gradient."""

    @staticmethod
    def forward(ctx, E_id, *args):
        *a, (E_img, products, views, log_w, bound, chunk, grads) = args
        # Eq. 5's branches of weight > 0, the image one first: their shared buffer keeps the last one's G, for d/dE_id
        kept = [b for b in reversed(range(len(a))) if log_w[b] > -math.inf]
        dE = torch.zeros_like(E_id) if grads else None  # all N rows: a gradient of E[I] would cost a second (N, d)
        ctx.grads = [dE] + [torch.empty_like(a[b]) if grads and b in kept else None for b in range(len(a))]
        a_p = [a_b.to(E_p.dtype) for a_b, E_p in zip(a, products)]  # as the products read them
        log_P, T = [], slice(0, 0)
        for view in views:
            T, I = slice(T.stop, T.stop + len(view.target)), view.items  # the view's positions, its softmax's items
            branches = [(a[b][T], (E_id, E_img)[b][I], a_p[b][T], products[b][I], log_w[b],
                         None if dE is None or b else dE[I], ctx.grads[1 + b][T] if grads else None) for b in kept]
            rows = max(1, chunk // len(E_id[I]))
            log_P.append(_nll_chunks(branches, view.target, rows, bound, view.scale if grads else None))
        nlls = -torch.stack(log_P)  # (V,) each view's Σ_t -log P
        total = nlls[0] * views[0].scale
        for view, nll in zip(views[1:], nlls[1:]):
            total = total.add(nll, alpha=view.scale)
        ctx.mark_non_differentiable(nlls)
        return total, nlls

    @staticmethod
    def backward(ctx, g, _):
        grads, ctx.grads = ctx.grads, None  # its own, so scaled in place: a fresh (N, d) costs page faults on CPU
        return (*(None if d is None else d.mul_(g) for d in grads), None)


def nll_views(views: list[ViewNLL], E_id, E_img, alpha: float, temperature: float, chunk: int) -> tuple:
    """(Eq. 6/7) Σ_v scale_v·Σ_t -log P^v(target_t | S) and each Σ_t (V,); E_id, the frozen E_img: (N, d) unit rows."""
    log_w = (0.0, -math.inf) if views[0].h_img is None else (log_weight(alpha), log_weight(1.0 - alpha))  # (Eq. 5)
    # (Eq. 2) a = unit(h)/τ of each branch, every view's positions at once: (T, d)
    a = [unit_rows(torch.cat(h)) / temperature for h in zip(*(view[:2] for view in views)) if h[0] is not None]
    grads = torch.is_grad_enabled() and any(t.requires_grad for t in [E_id, *a])
    return _FusedNLL.apply(E_id, *a, (E_img, cast(E_id.detach(), E_img), views, log_w, 1 / temperature, chunk, grads))


def nll(h_id: torch.Tensor, E_id: torch.Tensor, h_img: torch.Tensor | None, E_img: torch.Tensor | None,
        target: torch.Tensor, alpha: float, temperature: float, chunk: int, items: slice = slice(None)) -> torch.Tensor:
    """Σ_t -log P(target_t | S) over T positions (the sum of Eq. 6) of one view: `nll_views` of it alone."""
    return nll_views([ViewNLL(h_id, h_img, target, items, 1.0)], E_id, E_img, alpha, temperature, chunk)[0]


def nll_dot(h: torch.Tensor, E: torch.Tensor, target: torch.Tensor, items: slice, chunk: int) -> torch.Tensor:
    """Σ_t -log softmax(h_t·E[items]^T)[target_t], h (T, d), E (N, d): the sequence baselines' cross-entropy
    (baselines.py) by the same chunks and gradient as Eq. 6, on one branch whose logits are plain dot
    products (no unit rows, no τ, so no bound: each chunk's row maximum is subtracted)."""
    grads = torch.is_grad_enabled() and (h.requires_grad or E.requires_grad)
    view = ViewNLL(h, None, target, items, 1.0)
    return _FusedNLL.apply(E, h, (None, (E, None), [view], (0.0, -math.inf), math.inf, chunk, grads))[0]


class _UnitRows(torch.autograd.Function):
    """unit(E) = E / max(‖E‖, ε) by rows, as F.normalize, with a 3-pass backward (autograd's ~10): (g - u·(u·g))/‖E‖."""

    @staticmethod
    def forward(ctx, E):
        norm = torch.linalg.vector_norm(E, dim=-1, keepdim=True).clamp_min_(1e-12)  # (N, 1)
        u = E / norm
        ctx.save_for_backward(u, norm)
        return u

    @staticmethod
    def backward(ctx, g):
        u, norm = ctx.saved_tensors
        along = torch.linalg.vecdot(u, g)[:, None].masked_fill_(norm <= 1e-12, 0)  # (N, 1) u·g; 0 where clamped
        return torch.addcmul(g, u, along, value=-1).div_(norm)


unit_rows = _UnitRows.apply  # E's rows normalised for Eq. 2 (N, d): `ifcdsr.unit`'s values, a cheaper gradient


def view_sum(total, views, E_id, E_img, alpha: float, temperature: float, chunk: int) -> torch.Tensor:
    """(Eq. 8) Σ_v λ_v·P^v(x_i | S) added into `total` (B, |items|), chunk // |own| histories at a time; `views` as
    `IFCDSR.score` builds them. Note: computed as written, in probability space (fp32): an item's P underflows to 0
    only if its logit is > 87 below the row's best in every branch, impossible for τ > 2/87 (cosines span 2/τ)."""
    for weight, own, into, src, h_id, h_img, empty in views:
        n = own.stop - own.start
        rows = max(1, chunk // n)
        for i in range(0, len(total), rows):
            c = slice(i, i + rows)
            s = _scratch(len(empty[c]), n, total)  # (c, n) logits, then exp(logits - m)
            total[c, into].add_(weight / n * empty[c])  # the uniform mass of an empty view, in place
            # (Eq. 5) P^v = α·P_id + (1-α)·P_img (the ID branch alone: P_id), added with the view's weight (Eq. 8)
            for h, E, w in ((h_id, E_id, alpha if h_img is not None else 1.0), (h_img, E_img, 1.0 - alpha)):
                if h is None or w == 0:
                    continue
                _logits(unit_rows(h[c]) / temperature, E[own], s)  # (Eq. 2) s = Sim(h, E)
                _exp_(s, 1 / temperature)
                Z = s.sum(dim=-1, keepdim=True)  # (Eq. 3/4) P_b = s / Z
                total[c, into].addcmul_(s[:, src], weight * w * ~empty[c] / Z)  # += λ_v·w_b·P_b, non-empty views
    return total


# ----------------------------------------------------------------------------- the device policy
# How much of Eq. 2-8 is computed at once, in what dtype, and how a batch reaches the device: never what.

CPU_CHUNK = 2**25  # Config.score_chunk's auto value on a CPU: a (332 × 100,782) fp32 logits buffer, 134 MB


def chunk(score_chunk: int, device: torch.device) -> int:
    """`Config.score_chunk` resolved; auto (0): CPU_CHUNK on a CPU, on CUDA a quarter of the free memory (4-byte)."""
    return score_chunk or (_free_bytes(device) // 16 if device.type == "cuda" else CPU_CHUNK)


def plain(rows: int, N: int, chunk: int, device: torch.device) -> bool:
    """Whether `rows` positions over N items run IFCDSR's plain code; never on CUDA (this file moves fewer bytes)."""
    return device.type != "cuda" and 2 * rows * N <= chunk  # on a CPU while autograd's ~2 (rows, N) logits fit


@functools.cache
def _free_bytes(device: torch.device) -> int:
    return torch.cuda.mem_get_info(device)[0]


def cast(E_id: torch.Tensor, E_img: torch.Tensor | None) -> tuple:
    """The item matrices as Eq. 2's products read them: under autocast cast once a step (E_id), once a run (E_img)."""
    if not torch.is_autocast_enabled(E_id.device.type):
        return E_id, E_img
    low = torch.get_autocast_dtype(E_id.device.type)
    return E_id.to(low), None if E_img is None else _cast_once(E_img, low)


@functools.lru_cache(maxsize=1)
def _cast_once(E: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return E.to(dtype)


def host_to(device, t: torch.Tensor) -> torch.Tensor:
    """A CPU tensor to the device; to CUDA through page-locked memory, so the host does not wait for the copy."""
    pinned = torch.device(device).type == "cuda" and t.device.type == "cpu"
    return t.pin_memory().to(device, non_blocking=True) if pinned else t.to(device)
