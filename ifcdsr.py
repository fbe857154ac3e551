"""IFCDSR: Image Fusion for Cross-Domain Sequential Recommendation (Wu et al., WWW Companion 2025); search "Eq.".

Shapes: B sequences, L positions (max_len, left-padded), N items, T a batch's prediction positions (Eq. 6's t), q E_id's
width, e the CLIP E_img's. Ids: X = 0..|X|-1, Y = |X|..N-1, padding = N. Large (positions × N) logits: fused_loss.py."""
import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

import fused_loss
from fused_loss import host_to, log_weight

VIEWS = ("x", "y", "xy")  # S^X, S^Y, S^{X+Y}


@dataclasses.dataclass
class Config:  # the model's values from paper §4 "Implementation Details"
    q: int = 256  # q, width of the learnable ID embedding E_id
    alpha: float = 0.7  # α in Eq. 5: weight of the ID branch
    lambda1: float = 0.1  # λ1 in Eq. 7/8: weight of the source-domain view
    lambda2: float = 0.4  # λ2 in Eq. 7/8: weight of the merged view S^{X+Y}
    dropout: float = 0.3  # dropout rate
    max_len: int = 15  # Note: not stated in the paper (§4 gives no length); C2DSR's L, the last 15 items kept
    n_blocks: int = 2  # Note: not stated in the paper; C2DSR's (whose settings §4 adopts) value
    n_heads: int = 1  # Note: not stated in the paper; C2DSR's value
    # readings of open passages (docs/interpretations.md measures each); --literal sets all three as printed
    temperature: float = 1.0  # τ of Eq. 2. Note: none printed (τ = 1): cosines in [-1, 1], flat softmax over many items
    # Note: Eq. 6 sums -log P over positions, Eq. 7 weighs the sums (printed: "sum", each divided by one B·L shared by
    # all views, as C2DSR's masked mean); "mean" averages each view over its own positions, rebalancing the views
    loss_norm: str = "sum"  # "sum" or "mean"
    # Note: Eq. 3/4 softmax over E^X, "the item matrix computed within S^X" (printed: "domain", each view over its own
    # domain's items, S^{X+Y} over all); "all": all N (§3.1.2: "each item across all domains"); see IFCDSR.score
    softmax_over: str = "domain"  # "domain" or "all"
    use_image: bool = True  # False = --no-image: ID branch only (α = 1)
    multi_attention: bool = True  # False = --no-multi-attention: only the S^{X+Y} view
    target: str = "X"  # the target domain of Eq. 7-9; "Y" swaps the roles of the domains
    batch_size: int = 256  # mini-batch size
    lr: float = 5e-4  # learning rate. Note: from the paper's grid {1e-3, 5e-4, 1e-4}, the best on the demo's validation
    weight_decay: float = 5e-5  # L2 coefficient. Note: from the paper's grid {1e-4, 5e-5, 1e-5}, the best cell with lr
    epochs: int = 100  # training epochs
    patience: int = 10  # early stopping: evaluations without a better validation MRR
    eval_every: int = 1  # validate every this many epochs
    score_chunk: int = 0  # Note: memory only, same numbers up to rounding: (positions × items) logits at once; 0 = auto
    seed: int = 0  # the training seed: initialisation and batch order (the data and the negatives are fixed)

    def replace(self, **overrides) -> "Config":
        """A copy with some fields changed, checked; an unknown field is a TypeError."""
        return dataclasses.replace(self, **overrides).check()

    def check(self) -> "Config":
        """self if every field is within RANGES or CHOICES (never NaN or ±inf), else a ConfigError."""
        for name, (low, high) in RANGES.items():
            value, kind = getattr(self, name), int if isinstance(low, int) else float
            if isinstance(value, bool) or not isinstance(value, (int, kind)) or not low <= value <= high:
                raise ConfigError(name, value, f"an integer in [{low:,}, {high:,}]" if kind is int else
                                  f"a number in [{low:g}, {high:g}]")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(name, getattr(self, name), " or ".join(map(repr, allowed)))
        if self.q % self.n_heads:
            raise ConfigError("n_heads", self.n_heads, f"a divisor of q = {self.q}")
        return self

    def view_weights(self) -> dict[str, float]:
        """Weights of Eq. 7/8: 1 for the target view, λ1 for the source view, λ2 for the merged view."""
        if not self.multi_attention:  # Table 4 row 1/2: all behaviour combined into one representation
            return {"xy": 1.0}
        source = "y" if self.target == "X" else "x"  # Note: the paper's target domain is X; for target Y the roles swap
        return {self.target.lower(): 1.0, source: self.lambda1, "xy": self.lambda2}


RANGES = {  # the accepted values of every numeric Config field, both ends included (the seed: numpy's range)
    "q": (1, 4096), "alpha": (0.0, 1.0), "lambda1": (0.0, 100.0), "lambda2": (0.0, 100.0), "dropout": (0.0, 0.9),
    "max_len": (1, 1024), "n_blocks": (0, 64), "n_heads": (1, 64), "temperature": (0.01, 100.0),
    "batch_size": (1, 65536), "lr": (1e-8, 1.0), "weight_decay": (0.0, 1.0), "epochs": (1, 100_000),
    "patience": (1, 100_000), "eval_every": (1, 100_000), "score_chunk": (0, 2**40), "seed": (0, 2**32 - 1)}
CHOICES = {"loss_norm": ("mean", "sum"), "softmax_over": ("all", "domain"), "target": ("X", "Y"),
           "use_image": (True, False), "multi_attention": (True, False)}
PRINTED = {"temperature": 1.0, "loss_norm": "sum", "softmax_over": "domain"}  # --literal: Eq. 2-7 as printed


class ConfigError(ValueError):
    """A Config field outside its accepted values."""

    def __init__(self, field: str, value, expected: str):
        super().__init__(f"{field} = {value!r}: expected {expected}")
        self.field, self.value, self.expected = field, value, expected


# ----------------------------------------------------------------------------- Eq. 1: attention layer


class Block(nn.Module):
    """A pre-LayerNorm block: x + Dropout(g(LayerNorm(x))), g attention then a feed-forward (SASRec's §III-C)."""

    def __init__(self, width: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.out = nn.Linear(width, 3 * width), nn.Linear(width, width)  # the attention's
        self.ffn = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Dropout(dropout), nn.Linear(width, width))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        B, L, d = x.shape
        q, k, v = self.qkv(self.ln_1(x)).view(B, L, 3, self.n_heads, d // self.n_heads).unbind(2)  # each (B, L, h, d/h)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, h, L, d/h)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None],
                                           dropout_p=self.dropout if self.training else 0.0)  # (B, h, L, d/h)
        x = x + self.drop(self.out(y.transpose(1, 2).reshape(B, L, d)))  # (B, L, d)
        return x + self.drop(self.ffn(self.ln_2(x)))


class AttentionEncoder(nn.Module):
    """(Eq. 1) H = Attention(F), causal self-attention over a view of a modality. Note: the paper does not specify the
    layer: SASRec's encoder as its paper prints it (§III-C); C2DSR runs SASRec's code's `baselines.SASRecBlock`."""

    def __init__(self, width: int, cfg: Config, block: type[nn.Module] = Block):
        super().__init__()
        self.positions = nn.Embedding(cfg.max_len, width)
        nn.init.normal_(self.positions.weight, std=0.02)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(block(width, cfg.n_heads, cfg.dropout) for _ in range(cfg.n_blocks))
        self.ln_f = nn.LayerNorm(width)

    def forward(self, F_seq: torch.Tensor, is_pad: torch.Tensor, mask: tuple | None = None) -> torch.Tensor:
        """F_seq (B, L, d) items in sequence order, is_pad (B, L), `mask` = attention_mask(is_pad) -> H (B, L, d)."""
        pos, allowed = mask or attention_mask(is_pad)
        with torch.autocast("cuda", enabled=False):  # fp32 (TF32 products, train.tf32): a layer's bf16 casts cost more
            x = self.drop(F_seq + self.positions(pos))
            for block in self.blocks:
                x = block(x, allowed)
            return self.ln_f(x)  # (B, L, d)


def attention_mask(is_pad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """is_pad (B, L) -> positions (B, L), additive mask: a query sees itself and earlier real keys (no empty row)."""
    L = is_pad.shape[1]
    pos = (torch.cumsum(~is_pad, dim=1) - 1).clamp(min=0)  # (B, L) from each first real item: left padding is inert
    causal = torch.ones(L, L, dtype=torch.bool, device=is_pad.device).tril()  # query i sees keys j <= i
    allowed = (causal & ~is_pad[:, None, :]) | torch.eye(L, dtype=torch.bool, device=is_pad.device)  # (B, L, L)
    return pos, torch.where(allowed, 0.0, float("-inf"))


# ----------------------------------------------------------------------------- Eq. 2-6: scoring


def unit(x: torch.Tensor) -> torch.Tensor:
    """x / ‖x‖ along the last dimension, with an epsilon: a zero row (an item without an image) stays zero."""
    return F.normalize(x, dim=-1)


def similarity(h: torch.Tensor, E_unit: torch.Tensor, temperature: float) -> torch.Tensor:
    """(Eq. 2) Sim(h, E) = h·E^T / (‖h‖‖E‖) / τ: h (T, d), E_unit = unit(E) (N, d) -> (T, N); a zero row gives 0."""
    return (unit(h) / temperature) @ E_unit.T  # (T, N); 1/τ scales h, the smaller operand


def branch_log_prob(h: torch.Tensor, E_unit: torch.Tensor, temperature: float) -> torch.Tensor:
    """(Eq. 3/4) log P_b = log softmax(Sim(h, E_b)) over the rows of E_b: h (T, d), E_unit (N, d) -> (T, N)."""
    s = similarity(h, E_unit, temperature)  # (T, N)
    return F.log_softmax(s.to(torch.promote_types(s.dtype, torch.float32)), dim=-1)  # (T, N) never in bf16


def mixture(log_P_id: torch.Tensor, log_P_img: torch.Tensor, alpha: float) -> torch.Tensor:
    """(Eq. 5) P = α·P_id + (1-α)·P_img, in log space: log(e^(log α + log P_id) + e^(log(1-α) + log P_img))."""
    return torch.logaddexp(log_P_id + log_weight(alpha), log_P_img + log_weight(1.0 - alpha))  # (T, N)


def log_prob(h_id, E_id, h_img, E_img, alpha: float, temperature: float, items: slice = slice(None)) -> torch.Tensor:
    """(Eq. 3-5) log P(· | S) of one view's T positions over the rows `items` of E_id, E_img (unit rows) -> (T, n)."""
    log_P_id = branch_log_prob(h_id, E_id[items], temperature)  # (Eq. 3) P_id = softmax(Sim(h_id, E_id))
    if h_img is None:
        return log_P_id
    log_P_img = branch_log_prob(h_img, E_img[items], temperature)  # (Eq. 4) P_img = softmax(Sim(h_img, E_img))
    return mixture(log_P_id, log_P_img, alpha)  # (Eq. 5)


# ----------------------------------------------------------------------------- the model


def trim(pad: int, seq: torch.Tensor, *aligned: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """seq (B, L) and `aligned` less the leading all-padding columns: the same outputs, less work. CPU tensors."""
    width = max(1, int((seq != pad).sum(1).max()))
    return tuple(t[:, -width:] for t in (seq, *aligned))


@dataclasses.dataclass
class ViewShape:  # what a batch decides about one view's work, read from its CPU copy by `shapes`
    width: int  # the columns `trim` keeps: the view's longest history in the batch (left padding: the last ones)
    count: int = 0  # T, the view's prediction positions (Eq. 6's t), in training
    at: torch.Tensor | None = None  # (T,) their flat indices into the trimmed (B·width), on the model's device


def shapes(pad: int, inputs, targets=None, device="cpu") -> dict[str, ViewShape]:
    """Each view's ViewShape for a batch of Views (and in training their next items), from CPU tensors: no wait."""
    out = {}
    for view in VIEWS:
        width = trim(pad, getattr(inputs, view))[0].shape[1]
        at = None if targets is None else (getattr(targets, view)[:, -width:] != pad).flatten().nonzero()[:, 0]
        out[view] = ViewShape(width) if at is None else ViewShape(width, len(at), host_to(device, at))  # at: (T,)
    return out


def domain_items(domain: str, num_x: int, N: int) -> slice:
    """The global ids of domain X (0..|X|-1) or Y (|X|..N-1). Eq. 9 ranks only the target domain's."""
    return slice(0, num_x) if domain == "X" else slice(num_x, N)


class IFCDSR(nn.Module):
    """The model, with the baselines' interface: `views` (the loss's parts), `loss`, `score`, `scorer`, `chunk`."""

    def __init__(self, cfg: Config, num_x: int, num_y: int, E_img: torch.Tensor | None = None):
        super().__init__()
        cfg.check()
        self.cfg, self.num_x, self.num_y = cfg, num_x, num_y
        self.N = self.pad = num_x + num_y
        self.views = tuple(cfg.view_weights())  # the views of Eq. 7, in its order
        self.E_id = nn.Embedding(self.N + 1, cfg.q, padding_idx=self.pad)  # §3.1.1: the learnable (N, q) E_id + padding
        # Note: init not in the paper: rows of norm ~1 (std q^-1/2, not N(0, 1)), so Adam's ~lr steps turn them quickly
        nn.init.normal_(self.E_id.weight, std=cfg.q ** -0.5)
        nn.init.zeros_(self.E_id.weight[self.pad])
        # Note: six encoders, one per view and branch (§3.2: "six sequence representations derived from multiple
        # attention layers"); the paper does not say whether any weights are shared, so none are
        views = VIEWS if cfg.multi_attention else ("xy",)
        self.enc_id = nn.ModuleDict({v: AttentionEncoder(cfg.q, cfg) for v in views})
        if cfg.use_image and E_img.shape[1] % cfg.n_heads:  # q's heads are checked by Config.check
            raise ConfigError("n_heads", cfg.n_heads, f"a divisor of the image width e = {E_img.shape[1]} too")
        if cfg.use_image:  # Note: §3.1.1's frozen (N, e) CLIP E_img, a buffer not in checkpoints: re-read from the data
            self.register_buffer("E_img", F.pad(E_img.float(), (0, 0, 0, 1)), persistent=False)  # + a padding row
            self.register_buffer("E_img_unit", unit(self.E_img[:-1]), persistent=False)  # normalised once: frozen
            self.enc_img = nn.ModuleDict({v: AttentionEncoder(E_img.shape[1], cfg) for v in views})
        else:
            self.E_img = self.E_img_unit = self.enc_img = None

    def encode(self, seq: torch.Tensor, view: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """seq (B, L) item ids of one view -> (H_id (B, L, q), H_img (B, L, e) or None) by Eq. 1."""
        is_pad = seq == self.pad
        mask = attention_mask(is_pad)  # the same for both branches
        F_id = self.E_id(seq)  # (B, L, q): E_id rows in sequence order
        H_id = self.enc_id[view](F_id, is_pad, mask)  # (Eq. 1) H_id = Attention(F_id)
        if self.E_img is None:
            return H_id, None
        F_img = self.E_img[seq]  # (B, L, e). Note: E_img's rows as they are, no projection: the paper's H_img is e wide
        return H_id, self.enc_img[view](F_img, is_pad, mask)  # (Eq. 1) H_img = Attention(F_img)

    def chunk(self) -> int:
        return fused_loss.chunk(self.cfg.score_chunk, self.E_id.weight.device)

    def softmax_items(self, view: str) -> slice:
        """The items of P^v's softmax (Eq. 3/4): all N, or under softmax_over = "domain" its own domain's."""
        own = self.cfg.softmax_over == "domain" and view != "xy"
        return domain_items(view.upper(), self.num_x, self.N) if own else slice(0, self.N)

    def loss(self, inputs, targets, shape: dict | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(Eq. 7) L = L^X + λ1·L^Y + λ2·L^{X+Y} (X the target domain) of a batch, and each view's part (0-d)."""
        cfg, weights, device = self.cfg, self.cfg.view_weights(), self.E_id.weight.device
        shape = shape or shapes(self.pad, inputs, targets, device)  # from the CPU copy, else from `inputs`: a wait
        if plain := fused_loss.plain(max(shape[v].count for v in weights), self.N, self.chunk(), device):  # else fused
            E_id, E_img = fused_loss.cast(unit(self.E_id.weight[:-1]), self.E_img_unit)  # (N, q), (N, e): Eq. 2's rows
        views, norms = [], []  # each view's fused_loss.ViewNLL, Eq. 6's divisor
        for view, weight in weights.items():  # each view's next-item positions t of Eq. 6
            width, at = shape[view].width, shape[view].at
            seq, nxt = getattr(inputs, view)[:, -width:], getattr(targets, view)[:, -width:]  # (B, width)
            H_id, H_img = self.encode(seq, view)
            items = self.softmax_items(view)  # the next items are among them
            norms.append(seq.shape[0] * cfg.max_len if cfg.loss_norm == "sum" else max(shape[view].count, 1))
            views.append(fused_loss.ViewNLL(H_id.flatten(0, 1)[at], None if H_img is None else H_img.flatten(0, 1)[at],
                                            nxt.flatten()[at] - items.start, items, weight / norms[-1]))
        if not plain:  # every view at once, E_id with its padding row (N + 1, q; none scores it): one gradient
            total, nlls = fused_loss.nll_views(views, fused_loss.unit_rows(self.E_id.weight), self.E_img_unit,
                                               cfg.alpha, cfg.temperature, self.chunk())
            return total, {view: nll / norm for view, nll, norm in zip(weights, nlls, norms)}  # (Eq. 7)
        total, parts = 0.0, {}
        for view, (h_id, h_img, y, items, _), norm in zip(weights, views, norms):
            log_P = log_prob(h_id, E_id, h_img, E_img, cfg.alpha, cfg.temperature, items)  # (T, n) Eq. 2-5
            L_v = -log_P.gather(1, y[:, None]).sum() / norm  # (Eq. 6) Σ_t -log P^v(v_{t+1} | S), normalised
            total = total + weights[view] * L_v  # (Eq. 7)
            parts[view] = L_v.detach()
        return total, parts  # in the order of Eq. 7

    @torch.no_grad()
    def score(self, history, items: slice = slice(None), shape: dict | None = None, matrices=None) -> torch.Tensor:
        """(Eq. 8) P(x_i | S) = P^X + λ1·P^Y + λ2·P^{X+Y} -> (B, |items|) over `items`; `matrices`: `scorer`'s."""
        cfg, views, (lo, hi) = self.cfg, [], items.indices(self.N)[:2]
        E_id, E_img = matrices or (unit(self.E_id.weight[:-1]), self.E_img_unit)  # (N, q), (N, e) for Eq. 2
        shape = shape or shapes(self.pad, history)  # from the batch's CPU copy, else from `history`: a wait
        for view, weight in cfg.view_weights().items():  # each view read at its last position
            seq = getattr(history, view)[:, -shape[view].width:]  # (B, width)
            H_id, H_img = self.encode(seq, view)
            own = self.softmax_items(view)
            a, b = max(own.start, lo), max(own.start, lo, min(own.stop, hi))  # the requested items P^v covers
            views.append((weight, own, slice(a - lo, b - lo), slice(a - own.start, b - own.start), H_id[:, -1],
                          None if H_img is None else H_img[:, -1], (seq == self.pad).all(1, keepdim=True)))
        # Note: under softmax_over = "domain" (as printed) P^Y is over Y, so Eq. 8's λ1·P^Y(x_i) is 0 for every item
        # of X: S^Y moves the target ranking only through training; under "all" every printed term of Eq. 8 acts
        total = torch.zeros(len(history.xy), hi - lo, device=E_id.device)  # (B, |items|) the sum of Eq. 8
        if not fused_loss.plain(len(history.xy), self.N, self.chunk(), E_id.device):  # the same sum, chunk() at a time
            return fused_loss.view_sum(total, views, E_id, E_img, cfg.alpha, cfg.temperature, self.chunk())
        for weight, own, into, src, h_id, h_img, empty in views:  # λ_v, its softmax's items, the covered columns
            P_v = log_prob(h_id, E_id, h_img, E_img, cfg.alpha, cfg.temperature, own).exp()  # (B, |own|) Eq. 2-5
            # Note: a view without items (e.g. a history with no Y item) contributes the uniform 1/|own|
            P_v = torch.where(empty, 1.0 / (own.stop - own.start), P_v)
            total[:, into] += weight * P_v[:, src]  # (Eq. 8) Σ_v λ_v·P^v
        return total  # (B, |items|)

    def scorer(self):
        """`score` for a pass over many batches with the same weights: the item matrices normalised once."""
        matrices = unit(self.E_id.weight[:-1]), self.E_img_unit
        return lambda history, items, shape: self.score(history, items, shape, matrices)

    def recommend(self, history) -> torch.Tensor:
        """(Eq. 9) argmax over x_i in the target domain of P(x_i | S) -> (B,) global item ids."""
        target = domain_items(self.cfg.target, self.num_x, self.N)
        return self.score(history, target).argmax(dim=1) + target.start
