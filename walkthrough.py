"""Learn IFCDSR by running it: one user's history followed through Eq. 1-9 with the numbers the model computes.

    python walkthrough.py                      # target domain X (Food), the default settings
    python walkthrough.py --target Y           # the same history, ranked over Kitchen
    python walkthrough.py --no-image --temperature 0.1 --alpha 0.5 --softmax-over all ...

A tiny scenario is built in memory (5 Food items, 4 Kitchen items, 3-d "image" vectors), an IFCDSR with
q = 4 is trained on it for a few full-batch steps, and the history of a user of the test set (not among the
training sequences) is scored; Eq. 9 says whether it finds the user's held-out last item. Every printed
value is taken from the functions of ifcdsr.py while `IFCDSR.score` and `IFCDSR.loss` run (the functions are
wrapped to keep what they return), and each step is checked against the paper's formula, written out here,
applied to the step before: F are E's rows (§3.1.2), the logits are cos(h, E)/τ over the items of the view's
softmax (Eq. 2-4), P_b their softmax, P the α-mixture (Eq. 5), and the losses, Eq. 8's columns and Eq. 9's
argmax are what `IFCDSR.loss`, `IFCDSR.score` and `IFCDSR.recommend` return. Where the model's numbers do not
follow, the program stops with an error that names the step (exit code 1). docs/walkthrough.md explains each
step. It reads no files and writes none.
"""
from __future__ import annotations

import argparse
import contextlib
import sys

import torch

import ifcdsr
from data import make_eval_set, make_train_set
from ifcdsr import IFCDSR, PRINTED, RANGES, Config
from train import bounded, safe_output

FOOD = ["espresso", "green tea", "chocolate", "olive oil", "pasta"]  # domain X: ids 0-4
KITCHEN = ["moka pot", "teapot", "grater", "saucepan"]  # domain Y: ids 5-8
NAMES = FOOD + KITCHEN
# a 3-d stand-in for CLIP's image vectors: how brown, how green, how steel-grey the picture is
E_IMG = torch.tensor([[0.9, 0.1, 0.0], [0.1, 0.9, 0.1], [0.8, 0.2, 0.0], [0.4, 0.8, 0.1], [0.7, 0.5, 0.0],
                      [0.3, 0.0, 0.9], [0.1, 0.6, 0.6], [0.0, 0.1, 1.0], [0.2, 0.1, 0.9]])
TRAIN = [  # coffee, tea and cooking habits, in time order
    "espresso, moka pot, chocolate, espresso, grater, chocolate, espresso",
    "chocolate, espresso, moka pot, espresso, chocolate, saucepan, espresso",
    "espresso, chocolate, moka pot, espresso, teapot, chocolate",
    "green tea, teapot, green tea, chocolate, teapot, green tea",
    "teapot, green tea, olive oil, teapot, green tea, moka pot, green tea",
    "olive oil, saucepan, pasta, grater, olive oil, pasta, saucepan",
    "pasta, grater, olive oil, saucepan, pasta, grater",
    "olive oil, pasta, saucepan, grater, pasta, olive oil, saucepan, pasta",
]
USER = "espresso, moka pot, chocolate, grater, olive oil, saucepan, pasta"  # a test user: history, held-out item
L = 6  # max_len: a history keeps its last 6 items
STEPS, LR, SEED = 60, 0.03, 0  # full-batch Adam steps on TRAIN before the walk
VIEW = {"x": "S^X", "y": "S^Y", "xy": "S^{X+Y}"}
BRANCH = {"id": "ID", "img": "image"}


def ids(line: str) -> list[int]:
    return [NAMES.index(name.strip()) for name in line.split(",")]


def short(i: int) -> str:
    return NAMES[i] if i < len(NAMES) else "·"  # the padding id N


def row(values) -> str:
    return "".join(f"{v:>10.3f}" if isinstance(v, float) else f"{v:>10}" for v in values)


def vector(t: torch.Tensor) -> str:
    return "(" + ", ".join(f"{v:6.3f}" for v in t.tolist()) + ")"


@contextlib.contextmanager
def recording(model: IFCDSR):
    """Keeps, in call order, what ifcdsr.py's Eq. 1-5 functions return while the model runs: [(name, value)].
    The functions are wrapped in place (the model calls them through the module) and restored afterwards."""
    calls = []
    names = ("similarity", "branch_log_prob", "log_prob")  # log_prob returns Eq. 5's mixture
    originals = {name: getattr(ifcdsr, name) for name in names}

    def keep(name, fn):
        def wrapped(*args, **kwargs):
            out = fn(*args, **kwargs)
            calls.append((name, out.detach()))
            return out
        return wrapped

    def keep_H(key):  # an encoder's input F and output H (Eq. 1)
        return lambda module, inputs, H: calls.append(("H", key, inputs[0].detach(), H.detach()))

    hooks = [enc.register_forward_hook(keep_H((branch, view)))
             for branch, encoders in (("id", model.enc_id), ("img", model.enc_img or {}))
             for view, enc in encoders.items()]
    for name, fn in originals.items():
        setattr(ifcdsr, name, keep(name, fn))
    try:
        yield calls
    finally:
        for name, fn in originals.items():
            setattr(ifcdsr, name, fn)
        for hook in hooks:
            hook.remove()


def per_view(calls: list, model: IFCDSR) -> list[dict]:
    """The recorded calls of one `IFCDSR.score` or `IFCDSR.loss`, by view in the order of `Config.view_weights`
    (the order in which both compute them): {view, F, H: {branch}, sim: {branch}, log_P_b: {branch}, log_P}."""
    FH = {(key[1], key[0]): (F, H) for name, key, F, H in (c for c in calls if c[0] == "H")}  # (view, branch)
    views, current = [], {"sim": {}, "log_P_b": {}}
    for name, *value in calls:
        if name in ("similarity", "branch_log_prob"):  # the ID branch's, then the image branch's
            kept = current["sim" if name == "similarity" else "log_P_b"]
            kept[("id", "img")[len(kept)]] = value[0]
        elif name == "log_prob":  # closes one view's Eq. 2-5
            views.append({**current, "log_P": value[0]})
            current = {"sim": {}, "log_P_b": {}}
    order = list(model.cfg.view_weights())
    agree(len(views) == len(order), "Eq. 3-5 (log_prob)", f"{len(views)} calls for the views {order}")
    return [{**v, "view": view, "F": {b: FH[view, b][0] for b in ("id", "img") if (view, b) in FH},
             "H": {b: FH[view, b][1] for b in ("id", "img") if (view, b) in FH}} for v, view in zip(views, order)]


def softmax_ids(cfg: Config, view: str) -> list[int]:
    """The items of a view's softmax as the walkthrough reads Eq. 3/4, written out here to check the model's:
    all nine under `--softmax-over all`, else S^X's are the Food items, S^Y's the Kitchen ones, S^{X+Y}'s all."""
    if cfg.softmax_over == "all" or view == "xy":
        return list(range(len(NAMES)))
    return list(range(len(FOOD))) if view == "x" else list(range(len(FOOD), len(NAMES)))


def item_table(title: str, rows: list[tuple[str, list[int], torch.Tensor]]) -> None:
    """Rows of values over the items, each row over its own item ids (others shown as '-')."""
    print(f"{title:<24}" + "".join(f"{short(i)[:9]:>10}" for i in range(len(NAMES))))
    for label, items, values in rows:
        by_item = dict(zip(items, values.tolist()))
        print(f"{label:<24}" + row([by_item.get(i, "-") for i in range(len(NAMES))]))


def train_tiny(cfg: Config) -> IFCDSR:
    torch.manual_seed(SEED)
    # in float64, so that the 60 steps end on the same numbers whichever CPU kernels sum the products
    model = IFCDSR(cfg, len(FOOD), len(KITCHEN), E_IMG if cfg.use_image else None).double()
    data = make_train_set([ids(line) for line in TRAIN], len(FOOD), L, model.pad)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    model.train()
    for _ in range(STEPS):
        loss, _ = model.loss(data.inputs, data.targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


class Disagreement(RuntimeError):
    """A step whose printed numbers do not follow from the step before by the paper's formula."""


def agree(ok: bool, step: str, what: str) -> None:
    if not ok:
        raise Disagreement(f"{step}: the model's numbers do not follow the paper's formula: {what}")


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to the fp32 rounding of the branch softmax (`branch_log_prob` computes it in fp32)."""
    return a.shape == b.shape and torch.allclose(a.double(), b.double(), atol=1e-6)


def walk(cfg: Config) -> dict:
    """Prints Eq. 1-9 for the user's history, checking each step; returns what the printed pieces and the model
    gave, for tests. Disagreement names the first step whose numbers do not follow."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same sums in the same order on every machine
    try:
        return _walk(cfg)
    finally:
        torch.set_num_threads(threads)


def _walk(cfg: Config) -> dict:
    model = train_tiny(cfg)
    sequence = ids(USER)
    target = ifcdsr.domain_items(cfg.target, model.num_x, model.N)
    show_setting(cfg, sequence[:-1])
    hist = show_views(model, sequence)
    with recording(model) as calls:
        score = model.score(hist, target)[0]  # (|target domain|,)
    views = per_view(calls, model)
    show_F(model, hist, views)
    show_eq1(cfg, views)
    show_eq2(model, views)
    show_eq3_to_5(model, views)
    loss = show_eq6_7(model, sequence[:-1])
    contributions = show_eq8(model, views, score, list(range(target.start, target.stop)))
    eq9 = show_eq9(model, hist, contributions, target, sequence[-1])
    return {**loss, "contributions": contributions, "score": score, **eq9}


def show_setting(cfg: Config, history: list[int]) -> None:
    print(f"A tiny scenario: domain X = Food, ids 0-4: {', '.join(FOOD)}\n"
          f"                 domain Y = Kitchen, ids 5-8: {', '.join(KITCHEN)}")
    print(f"q = {cfg.q}, e = {E_IMG.shape[1]}, L = {cfg.max_len}, α = {cfg.alpha:g}, λ1 = {cfg.lambda1:g}, "
          f"λ2 = {cfg.lambda2:g}, τ = {cfg.temperature:g}; loss {cfg.loss_norm}, softmax over {cfg.softmax_over} "
          f"items;\nimages {'on' if cfg.use_image else 'off'}, target domain {cfg.target}; ", end="")
    print(f"trained for {STEPS} full-batch Adam steps (lr {LR:g}) on {len(TRAIN)} sequences; dropout off from here")
    print(f"\nA user of the test set (not a training sequence); the history S:\n  {', '.join(map(short, history))}\n")


def show_views(model: IFCDSR, sequence: list[int]):
    """§3.1.2: the three views of the history (everything before the held-out last item), left-padded."""
    hist = make_eval_set([sequence], model.num_x, model.cfg.max_len, model.pad).history
    print("§3.1.2 the three views, left-padded to L = 6 (· = padding id N = 9), each read at its last position")
    for v in ("x", "y", "xy"):
        print(f"  {VIEW[v]:<8} {[short(i) for i in getattr(hist, v)[0].tolist()]}")
    return hist


def show_F(model: IFCDSR, hist, views: list[dict]) -> None:
    """F_id and F_img of S^{X+Y}, checked for every view: the rows of E_id and E_img in sequence order."""
    for view in views:
        (seq,) = ifcdsr.trim(model.pad, getattr(hist, view["view"]))
        for b, E in (("id", model.E_id.weight), ("img", model.E_img)):
            agree(b not in view["F"] or torch.equal(view["F"][b][0], E[seq[0]]), "IFCDSR.encode",
                  f"{VIEW[view['view']]}'s F_{b} is not the rows of E_{b} of its items")
    merged, images = next(v for v in views if v["view"] == "xy"), model.cfg.use_image
    print("\nIFCDSR.encode: F_id = the rows of E_id in sequence order (q = 4)"
          + (", F_img = the rows of E_img (e = 3)" if images else "") + "; for S^{X+Y}:")
    for t, i in enumerate(ifcdsr.trim(model.pad, hist.xy)[0][0].tolist()):
        print(f"  {short(i):<10} F_id {vector(merged['F']['id'][0, t])}"
              + (f"   F_img {vector(merged['F']['img'][0, t])}" if images else ""))


def branches(cfg: Config) -> tuple[str, ...]:
    return ("id", "img") if cfg.use_image else ("id",)


def show_eq1(cfg: Config, views: list[dict]) -> None:
    print("\nEq. 1 (AttentionEncoder.forward): H = Attention(F), one encoder per view and branch; h = H's last row")
    for view in views:
        for b in branches(cfg):
            H = view["H"][b]
            print(f"  {VIEW[view['view']]:<8} {BRANCH[b]:<6} H {tuple(H.shape)}  h_{b} = {vector(H[0, -1])}")


def show_eq2(model: IFCDSR, views: list[dict]) -> None:
    """Eq. 2 for every view and branch, checked: the softmax's items (Eq. 3/4), then cos(h, E)/τ."""
    cfg, rows = model.cfg, []
    for view in views:
        v, items = view["view"], softmax_ids(cfg, view["view"])
        for b in branches(cfg):
            s = view["sim"][b][0]  # (n,) what `similarity` returned
            agree(len(s) == len(items), "Eq. 3/4 (branch_log_prob)",
                  f"{VIEW[v]}'s {BRANCH[b]} softmax runs over {len(s)} items; softmax over {cfg.softmax_over} "
                  f"gives it {len(items)} ({', '.join(short(i) for i in items)})")
            h, E = view["H"][b][0, -1], (model.E_id.weight if b == "id" else model.E_img)[items]  # (d,), (n, d)
            cos = E @ h / (E.norm(dim=1) * h.norm())  # (n,) cos(h, E_i), the cosines of Eq. 2
            agree(close(s, cos / cfg.temperature), "Eq. 2 (similarity)",
                  f"{VIEW[v]}'s {BRANCH[b]} logits {vector(s)}, cos(h, E)/τ {vector(cos / cfg.temperature)}")
            label = f"{VIEW[v]} {BRANCH[b]} cos"
            if cfg.temperature != 1:  # the cosine before τ, then the logit
                rows.append((label, items, cos))
                label += "/τ"
            rows.append((label, items, s))
    print("\nEq. 2 (similarity): cos(h, E) for every item of the view's softmax" +
          (" (τ = 1, as printed: the cosines themselves)" if cfg.temperature == 1 else
           f", then divided by τ = {cfg.temperature:g}"))
    item_table("", rows)


def show_eq3_to_5(model: IFCDSR, views: list[dict]) -> None:
    """Eq. 3/4 and 5 for every view, checked: each branch's softmax of its logits, then the α-mixture."""
    cfg, rows = model.cfg, []
    for view in views:
        v, items = view["view"], softmax_ids(cfg, view["view"])
        P_b = {b: view["log_P_b"][b][0].exp() for b in branches(cfg)}  # (n,) each branch's P_b
        for b, P in P_b.items():
            s = view["sim"][b][0].double()
            agree(close(P, s.exp() / s.exp().sum()), "Eq. 3/4 (branch_log_prob)",
                  f"{VIEW[v]}'s P_{b} {vector(P)}, softmax of its logits {vector(s.exp() / s.exp().sum())}")
            rows.append((f"{VIEW[v]} P_{b}", items, P))
        P = view["log_P"][0].exp()  # (n,) P^v
        mixed = cfg.alpha * P_b["id"] + (1 - cfg.alpha) * P_b["img"] if cfg.use_image else P_b["id"]
        agree(close(P, mixed), "Eq. 5 (mixture)",
              f"{VIEW[v]}'s P {vector(P)}, α·P_id + (1-α)·P_img {vector(mixed)}")
        rows.append((f"{VIEW[v]} P (Eq. 5)", items, P))
    print("\nEq. 3/4 (branch_log_prob): P_b = softmax(cos/τ) over those items\n"
          f"Eq. 5 (mixture): P = α·P_id + (1-α)·P_img with α = {cfg.alpha:g}")
    item_table("", rows)


def show_eq6_7(model: IFCDSR, history: list[int]) -> dict:
    """Eq. 6 and 7 on the history as one training sequence, recomputed from the recorded log P^v and checked
    against what `IFCDSR.loss` returns."""
    cfg, weights = model.cfg, model.cfg.view_weights()
    train = make_train_set([history], model.num_x, cfg.max_len, model.pad)
    with recording(model) as calls:
        total, parts = model.loss(train.inputs, train.targets)
    print("\nEq. 6 (IFCDSR.loss) on S as if it were a training sequence (the model never trained on it): every\n"
          "next item of each view, -log P^v(next)")
    weighted, L = 0.0, {}
    for view in per_view(calls, model):
        v = view["view"]
        seq, targets = ifcdsr.trim(model.pad, getattr(train.inputs, v), getattr(train.targets, v))
        keep = targets != model.pad
        start = softmax_ids(cfg, v)[0]
        nll = -view["log_P"].gather(1, (targets[keep] - start)[:, None])[:, 0]  # the target's entry of each row
        pairs = [f"{short(a)} -> {short(b)} {n:.3f}" for a, b, n in zip(seq[keep].tolist(), targets[keep].tolist(),
                                                                       nll.tolist())]
        scale = len(nll) if cfg.loss_norm == "mean" else seq.shape[0] * cfg.max_len
        L[v] = L_v = nll.sum().item() / scale
        weighted += weights[v] * L_v
        how = f"mean of {len(nll)}" if cfg.loss_norm == "mean" else f"sum of {len(nll)} / (B·L = {scale})"
        print(f"  L^{VIEW[v][2:]:<6} = {how}: {L_v:.3f}")
        for k in range(0, len(pairs), 3):
            print("      " + "; ".join(pairs[k:k + 3]))
    print("Eq. 7: L = " + " + ".join(f"{w:g}·{L[v]:.3f}" for v, w in weights.items()) + f" = {weighted:.3f}")
    agree(all(abs(L[v] - parts[v]) < 1e-5 for v in L), "Eq. 6 (IFCDSR.loss)", f"{L} against {parts}")
    agree(abs(weighted - total.item()) < 1e-5, "Eq. 7", f"{weighted} against IFCDSR.loss's {total.item()}")
    print(f"  IFCDSR.loss returns {total.item():.3f}: the same")
    return {"L": L, "parts": parts, "weighted": weighted, "loss": total.item()}


def show_eq8(model: IFCDSR, views: list[dict], score: torch.Tensor, target_ids: list[int]) -> dict:
    """Eq. 8's columns λ_v·P^v over the target domain's items, checked to sum to `IFCDSR.score`."""
    cfg, weights = model.cfg, model.cfg.view_weights()
    print(f"\nEq. 8 (IFCDSR.score): P(x_i|S) = Σ_v λ_v·P^v(x_i|S) over the target domain {cfg.target}'s items")
    contributions = {}
    for view in views:
        v, own = view["view"], softmax_ids(cfg, view["view"])
        P_v = dict(zip(own, view["log_P"][0].exp().tolist()))  # P^v over the view's own items; no view of S is empty
        contributions[v] = torch.tensor([weights[v] * P_v.get(i, 0.0) for i in target_ids])
    labels = [f"{'' if weights[v] == 1 else f'{weights[v]:g}·'}P^{VIEW[v][2:]}" for v in contributions]
    print(f"  {'item':<10}" + "".join(f"{label:>14}" for label in labels) + f"{'P(x_i|S)':>14}")
    eq8 = sum(contributions.values())
    for k, i in enumerate(target_ids):
        print(f"  {short(i):<10}" + "".join(f"{c[k].item():>14.4f}" for c in contributions.values())
              + f"{eq8[k].item():>14.4f}")
    agree(close(eq8, score), "Eq. 8 (IFCDSR.score)", f"{vector(eq8)} against IFCDSR.score's {vector(score)}")
    print("  the columns add up to what IFCDSR.score returns")
    source = next((v for v, w in weights.items() if v != "xy" and w != 1), None)
    if source is not None and cfg.softmax_over == "domain":  # the printed Eq. 3/4 against Eq. 8
        kind, other, P = ("Food", "Kitchen", "P^Y") if cfg.target == "X" else ("Kitchen", "Food", "P^X")
        print(f"  λ1·{P} is 0 for every {kind} item: under the printed Eq. 3/4, {P} is a distribution over {other} "
              f"only,\n  so the {VIEW[source]} encoders move this ranking only through training; --softmax-over all "
              f"is the\n  reading under which every printed term of Eq. 8 acts")
    return contributions


def show_eq9(model: IFCDSR, hist, contributions: dict, target: slice, held_out: int) -> dict:
    """Eq. 9's argmax, checked against `IFCDSR.recommend`, and whether it is the user's held-out item."""
    eq8 = sum(contributions.values())
    best = target.start + int(eq8.argmax())
    recommended = model.recommend(hist).item()
    agree(recommended == best, "Eq. 9 (IFCDSR.recommend)", f"{short(best)} against {short(recommended)}")
    hit = best == held_out
    print(f"\nEq. 9 (IFCDSR.recommend): argmax over the target domain -> {short(best)}")
    if target.start <= held_out < target.stop:
        rank = 1 + int((eq8 > eq8[held_out - target.start]).sum())
        print(f"  the user's held-out next item is {short(held_out)}: "
              + ("a hit" if hit else f"a miss ({short(held_out)} ranks {rank} of {len(eq8)})"))
    else:
        print(f"  the user's held-out next item, {short(held_out)}, lies in the other domain: this user is a test "
              f"case of target {'Y' if model.cfg.target == 'X' else 'X'} only")
    return {"best": best, "recommended": recommended, "hit": hit}


def config(argv) -> Config:
    """The walkthrough's Config from its command line (the tiny model: q = 4, L = 6)."""
    p = argparse.ArgumentParser(description="Follow one user's history through IFCDSR's Eq. 1-9.")
    p.add_argument("--target", default="X", choices=("X", "Y"), help="the target domain of Eq. 7-9")
    p.add_argument("--no-image", action="store_true", help="the ID branch only (α = 1)")
    p.add_argument("--temperature", type=bounded(float, *RANGES["temperature"]), help="τ dividing Eq. 2")
    p.add_argument("--alpha", type=bounded(float, *RANGES["alpha"]), help="α of Eq. 5")
    p.add_argument("--loss-norm", choices=("mean", "sum"), help="Eq. 6/7: each view's mean, or the sum")
    p.add_argument("--softmax-over", choices=("all", "domain"), help="Eq. 3/4: all N items or each view's own")
    p.add_argument("--literal", action="store_true", help="as printed: τ = 1, sum, domain (the defaults)")
    args = p.parse_args(argv)
    if args.no_image and args.alpha is not None:
        p.error("--alpha weighs the image branch of Eq. 5, which --no-image removes (α = 1); drop one of them")
    overrides = {k: v for k, v in (("temperature", args.temperature), ("alpha", args.alpha),
                                   ("loss_norm", args.loss_norm), ("softmax_over", args.softmax_over)) if v is not None}
    if args.literal:
        if PRINTED.keys() & overrides.keys():
            p.error("--literal sets temperature, loss_norm and softmax_over as printed; drop one or the other")
        overrides.update(PRINTED)
    return Config(q=4, max_len=L).replace(target=args.target, use_image=not args.no_image, **overrides)


def main(argv=None) -> int:
    try:
        cfg = config(argv)
    except SystemExit as exit_:  # argparse has printed what is wrong (or the help)
        return exit_.code
    try:
        walk(cfg)
    except Disagreement as error:
        print(f"walkthrough.py: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    safe_output()
    sys.exit(main())
