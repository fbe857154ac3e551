"""Equation-level and behavioural tests of the model (ifcdsr.py; paper: Wu et al., WWW Companion 2025).

Each equation test runs the model's own function on a tiny example whose numbers are worked out by hand in
its docstring. Most use four unit items and τ = 1/ln 3, so that exp(Sim(h, E_j)) = 3^cos is 3 for the item
h points at, 1 for an orthogonal one and 1/3 for the opposite one.
"""
import math

import pytest
import torch

from data import _views, make_train_set
from ifcdsr import (IFCDSR, RANGES, AttentionEncoder, Config, ConfigError, branch_log_prob, log_prob, similarity,
                    unit)

E = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])  # items 0, 1 (domain X) and 2, 3 (domain Y)
TAU = 1 / math.log(3)  # τ: Sim(h, E_j) = cos·ln 3


def copying_model(**overrides) -> IFCDSR:
    """IFCDSR on the items of E (|X| = |Y| = 2, padding id 4), E_id = E_img = E, τ = 1/ln 3, L = 3, and Eq. 1
    replaced by H = F: each position's h is its own item's row. Then P_img = P_id: Eq. 5 gives P_id for any α."""
    model = IFCDSR(Config(q=2, temperature=TAU, max_len=3).replace(**overrides), num_x=2, num_y=2, E_img=E)
    with torch.no_grad():
        model.E_id.weight[:4] = E
    model.encode = lambda seq, view: (model.E_id(seq), model.E_img[seq])
    return model


def tiny_model(use_image=True, multi=True, target="X", **overrides) -> IFCDSR:
    """A random IFCDSR (seed 0) with |X| = 3 items (0-2), |Y| = 4 (3-6), padding id 7, q = 8, e = 4."""
    torch.manual_seed(0)
    cfg = Config(q=8, use_image=use_image, multi_attention=multi, target=target, dropout=0.0, **overrides)
    return IFCDSR(cfg, num_x=3, num_y=4, E_img=torch.randn(7, 4) if use_image else None)


def views(rows, length=5):
    return _views(rows, 3, length, 7)  # tiny_model's items


# ----------------------------------------------------------------------------- equations


def test_eq1_attention_is_a_causal_masked_average_when_queries_are_blind():
    """Eq. 1 with one block whose query/key weights are zero: every allowed key scores the same, so position t
    attends uniformly to the real items j <= t. With identity value/output maps, a zero feed-forward and zero
    positions:  H_t = LN_f(F_t + mean_{j<=t, j real} LN_1(F_j)).  a = (1, 1, -1, -1) and b = (1, -1, 1, -1) have
    mean 0 and variance 1, so LayerNorm leaves them as they are. For F = [pad, a, b]:
      H_1 = LN_f(a + a) = a
      H_2 = LN_f(b + (a + b)/2) = LN_f((2, -1, 1, -2)), variance 10/4: (2, -1, 1, -2)/√2.5 = (1.26491, -0.63246, ...)
    (Attending to the padding would give LN_f(b + (a + b)/3) ∝ (5, -3, 3, -5); to b at position 1, (2, 1, -1, -2).)"""
    enc = AttentionEncoder(4, Config(n_blocks=1, n_heads=1, dropout=0.0)).eval()
    block = enc.blocks[0]
    with torch.no_grad():
        for p in [enc.positions.weight, *block.qkv.parameters(), *block.out.parameters(), *block.ffn.parameters()]:
            p.zero_()
        block.qkv.weight[8:].copy_(torch.eye(4))  # V = x
        block.out.weight.copy_(torch.eye(4))
    a, b = torch.tensor([1.0, 1.0, -1.0, -1.0]), torch.tensor([1.0, -1.0, 1.0, -1.0])
    H = enc(torch.stack([torch.zeros(4), a, b])[None], torch.tensor([[True, False, False]]))
    assert torch.allclose(H[0, 1], a, atol=1e-4)
    assert torch.allclose(H[0, 2], torch.tensor([1.26491, -0.63246, 0.63246, -1.26491]), atol=1e-4)


def test_eq2_cosine_similarity_by_hand():
    """h = (3, 4), ‖h‖ = 5; E rows (1, 0), (0, 2), (0, 0):
    cos = 3/5 = 0.6, 8/10 = 0.8, and 0 for the zero row (an item without an image).
    With τ = 0.5 the scores double: 1.2, 1.6, 0."""
    h = torch.tensor([[3.0, 4.0]])
    E_rows = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    assert torch.allclose(similarity(h, unit(E_rows), 1.0), torch.tensor([[0.6, 0.8, 0.0]]))
    assert torch.allclose(similarity(h, unit(E_rows), 0.5), torch.tensor([[1.2, 1.6, 0.0]]))


def test_eq3_eq4_softmax_over_cosine_by_hand():
    """h = (1, 0) against E rows (1, 0), (0, 1), (-1, 0): cos = 1, 0, -1, exp(cos·ln 3) = 3, 1, 1/3, so
    P = (3, 1, 1/3) / (13/3) = (9, 3, 1)/13 — the same formula for the ID (Eq. 3) and image (Eq. 4) branch."""
    P = branch_log_prob(torch.tensor([[1.0, 0.0]]), E[:3], TAU).exp()
    assert torch.allclose(P, torch.tensor([[9 / 13, 3 / 13, 1 / 13]]))


def test_eq3_eq4_as_printed_each_view_has_its_own_domains_softmax():
    """Eq. 3/4 as printed run the softmax over E^X, the items of S^X's domain. h = (1, 0) weighs the items of E
    3, 1, 1/3, 1: over X = {0, 1} P = (3, 1)/4, over Y = {2, 3} (1/3, 1)/(4/3) = (1, 3)/4, over all N items
    (3, 1, 1/3, 1)/(16/3) = (9, 3, 1, 3)/16. `softmax_items` gives S^X the X items, S^Y the Y items, S^{X+Y} all
    (and every view all of them with softmax_over = "all")."""
    model = copying_model()  # softmax_over = "domain" by default
    h = torch.tensor([[1.0, 0.0]])
    expected = {"x": [0.75, 0.25], "y": [0.25, 0.75], "xy": [9 / 16, 3 / 16, 1 / 16, 3 / 16]}
    for v, P in expected.items():
        assert torch.allclose(branch_log_prob(h, E[model.softmax_items(v)], TAU).exp(), torch.tensor([P]))
    assert [model.softmax_items(v) for v in ("x", "y", "xy")] == [slice(0, 2), slice(2, 4), slice(0, 4)]
    assert all(copying_model(softmax_over="all").softmax_items(v) == slice(0, 4) for v in ("x", "y", "xy"))


def test_eq5_alpha_mixture_by_hand():
    """h_id = (1, 0) gives P_id = (9, 3, 1)/13 (Eq. 3's test); h_img = (-1, 0) the reverse, P_img = (1, 3, 9)/13.
    With α = 0.75:  P = 0.75·P_id + 0.25·P_img = (6.75 + 0.25, 2.25 + 0.75, 0.75 + 2.25)/13 = (7, 3, 3)/13;
    α = 1 gives P_id, α = 0 gives P_img."""
    h_id, h_img = torch.tensor([[1.0, 0.0]]), torch.tensor([[-1.0, 0.0]])
    for alpha, P in ((0.75, [7, 3, 3]), (1.0, [9, 3, 1]), (0.0, [1, 3, 9])):
        assert torch.allclose(log_prob(h_id, E[:3], h_img, E[:3], alpha, TAU).exp(), torch.tensor([P]) / 13)
    # log space stays finite where probabilities underflow: τ = 1e-3 makes logits ±1000
    lp = log_prob(h_id, E[:3], h_img, E[:3], 0.7, 1e-3)
    assert torch.isfinite(lp).all() and math.isclose(lp.exp().sum().item(), 1.0, rel_tol=1e-5)


@pytest.mark.parametrize("loss_norm,L", [("sum", (0.462098, 0.095894, 2.040181)),
                                         ("mean", (1.386294, 0.287682, 2.040181))])
def test_eq6_each_view_sums_minus_log_p_of_its_next_items(loss_norm, L):
    """`IFCDSR.loss` on the sequence 0, 2, 1, 2 with h_t = the row of item t (`copying_model`); exp(Sim) weighs
    the items (3, 1, 1/3, 1) from h = E_0, (1, 3, 1, 1/3) from E_1 and (1/3, 1, 3, 1) from E_2. Each view's
    softmax runs over its own items (Eq. 3/4 as printed):
      S^X = 0, 1:  P(1 | 0) = 1/(3 + 1) = 1/4                                Σ -log P = log 4 = 1.386294
      S^Y = 2, 2:  P(2 | 2) = 3/(3 + 1) = 3/4                                Σ -log P = log 4/3 = 0.287682
      S^{X+Y}:     each sum of weights is 16/3: P(2 | 0) = 1/16, P(1 | 2) = 3/16, P(2 | 1) = 3/16
                                                Σ -log P = log 16 + 2·log 16/3 = log 4096/9 = 6.120542
    L^v = Σ divided by B·L = 1·3 for every view ("sum", Eq. 6 as printed) or by the view's positions 1, 1, 3
    ("mean")."""
    t = make_train_set([[0, 2, 1, 2]], num_x=2, max_len=3, pad=4)
    _, parts = copying_model(loss_norm=loss_norm).loss(t.inputs, t.targets)
    assert list(parts) == ["x", "y", "xy"]  # in the order of Eq. 7
    assert all(math.isclose(parts[v].item(), L_v, rel_tol=1e-5) for v, L_v in zip(parts, L))


def test_eq6_training_positions_are_every_next_item_of_each_view():
    """Sequence a(X)=0, b(Y)=3, c(X)=1, d(Y)=4 with |X| = 3 and pad 7:
    S^X = [0, 1] trains 0 -> 1;  S^Y = [3, 4] trains 3 -> 4;  S^{X+Y} trains 0->3, 3->1, 1->4."""
    t = make_train_set([[0, 3, 1, 4]], num_x=3, max_len=4, pad=7)
    pairs = {v: [(i, n) for i, n in zip(getattr(t.inputs, v)[0].tolist(), getattr(t.targets, v)[0].tolist())
                 if n != 7] for v in ("x", "y", "xy")}
    assert pairs == {"x": [(0, 1)], "y": [(3, 4)], "xy": [(0, 3), (3, 1), (1, 4)]}


@pytest.mark.parametrize("target,loss_norm,expected", [("X", "sum", 1.287760), ("Y", "sum", 0.958176),
                                                       ("X", "mean", 2.231135), ("Y", "mean", 1.242384)])
def test_eq7_loss_weights_target_source_and_merged_views(target, loss_norm, expected):
    """L = L^X + λ1·L^Y + λ2·L^{X+Y} with λ1 = 0.1, λ2 = 0.4 when X is the target; the roles swap for target Y.
    With the L^v of Eq. 6's test (λ2·L^{X+Y} = 0.4·2.040181 = 0.816072), through `IFCDSR.loss`:
      "sum":   X: 0.462098 + 0.1·0.095894 + 0.816072 = 1.287760    Y: 0.095894 + 0.1·0.462098 + 0.816072 = 0.958176
      "mean":  X: 1.386294 + 0.1·0.287682 + 0.816072 = 2.231135    Y: 0.287682 + 0.1·1.386294 + 0.816072 = 1.242384"""
    source = "y" if target == "X" else "x"
    assert Config(target=target).view_weights() == {target.lower(): 1.0, source: 0.1, "xy": 0.4}
    t = make_train_set([[0, 2, 1, 2]], num_x=2, max_len=3, pad=4)
    total, _ = copying_model(target=target, loss_norm=loss_norm).loss(t.inputs, t.targets)
    assert math.isclose(total.item(), expected, rel_tol=1e-5)


@pytest.mark.parametrize("softmax_over,expected", [
    ("domain", [[0.325, 0.975, 0.15, 0.05], [0.325, 0.975, 0.125, 0.075]]),
    ("all", [[4.3 / 16, 12.9 / 16, 5.1 / 16, 1.7 / 16], [0.2875, 0.8125, 0.2875, 0.1125]])])
def test_eq8_combines_views_at_their_last_position_and_empty_view_is_uniform(softmax_over, expected):
    """P = P^X + λ1·P^Y + λ2·P^{X+Y}, each view read at its last item, through `IFCDSR.score` (`copying_model`).
    History 0, 2, 1: S^X and S^{X+Y} end at item 1, whose h weighs the items (1, 3, 1, 1/3); S^Y ends at item 2,
    (1/3, 1, 3, 1).
      "domain" (printed): P^X = (1, 3)/4 over X, P^Y = (3, 1)/4 over Y, P^{X+Y} = (3, 9, 3, 1)/16 over all
          X: (0.25, 0.75) + 0.4·(3, 9)/16 = (0.325, 0.975);   Y: 0.1·(0.75, 0.25) + 0.4·(3, 1)/16 = (0.15, 0.05)
      "all": every view over the 4 items: P^X = P^{X+Y} = (3, 9, 3, 1)/16, P^Y = (1, 3, 9, 3)/16
          1.4·(3, 9, 3, 1)/16 + 0.1·(1, 3, 9, 3)/16 = (4.3, 12.9, 5.1, 1.7)/16
    History 0, 1 has no Y item: its P^Y is uniform, 1/2 over Y ("domain": Y gets 0.05 + 0.4·(3, 1)/16) or 1/4
    over all ("all": 1.4·(3, 9, 3, 1)/16 + 0.025). Each row's mass is 1 + 0.1 + 0.4 = 1.5; scoring a slice of
    the items gives those columns of the whole."""
    model = copying_model(softmax_over=softmax_over)
    history = _views([[0, 2, 1], [0, 1]], 2, 3, 4)
    score = model.score(history)  # (2, 4)
    assert torch.allclose(score, torch.tensor(expected))
    assert torch.allclose(score.sum(1), torch.tensor([1.5, 1.5]))
    assert torch.equal(model.score(history, slice(2, 4)), score[:, 2:])


@pytest.mark.parametrize("softmax_over", ["domain", "all"])
def test_eq8_the_source_view_moves_target_scores_only_when_its_softmax_covers_the_target(softmax_over):
    """Eq. 3/4 as printed against Eq. 8: under "domain" P^Y is a distribution over Y, so λ1·P^Y(x_i) = 0 for
    every X item and perturbing every weight of the two S^Y encoders leaves the target-X scores exactly as
    they were (the S^Y encoders act on the ranking only through training); under "all" the same
    perturbation changes them. The S^X and S^{X+Y} encoders are left as they were."""
    model = tiny_model(softmax_over=softmax_over).eval()
    hist = views([[0, 3, 1, 4], [5, 2, 6], [1, 2]])
    before = model.score(hist, slice(0, 3))  # (3, |X|)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in [*model.enc_id["y"].parameters(), *model.enc_img["y"].parameters()]:
            p.add_(torch.randn(p.shape, generator=g))
    after = model.score(hist, slice(0, 3))
    if softmax_over == "domain":
        assert torch.equal(before, after)
    else:
        assert (before - after)[:2].abs().min() > 1e-4  # the histories with a Y item; [1, 2] has none
        assert torch.equal(before[2], after[2])


def test_eq9_recommends_only_target_domain_items():
    """Eq. 9 takes the argmax over the target domain only: with scores (0.1, 0.5, 0.2 | 9, 0.3, 0, 0)
    the best item overall is 3 (domain Y), but target X recommends item 1 and target Y item 3."""
    scores = torch.tensor([[0.1, 0.5, 0.2, 9.0, 0.3, 0.0, 0.0]])
    for target, best in (("X", 1), ("Y", 3)):
        model = tiny_model(target=target)
        model.score = lambda history, items: scores[:, items]
        assert model.recommend(views([[0]])).tolist() == [best]
    model = tiny_model(target="X")
    model.score = lambda history, items: torch.tensor([[0.0, 0.0, 0.0, 9.0, 9.0, 9.0, 9.0]])[:, items]
    assert model.recommend(views([[0]])).item() < 3


# ----------------------------------------------------------------------------- behaviour


def test_causal_a_later_item_never_changes_an_earlier_output():
    model = tiny_model().eval()
    for view in ("x", "y", "xy"):
        short, long_ = torch.tensor([[7, 7, 0, 3, 1]]), torch.tensor([[7, 0, 3, 1, 5]])
        H_short, I_short = model.encode(short, view)
        H_long, I_long = model.encode(long_, view)
        assert torch.allclose(H_short[0, 2:], H_long[0, 1:4], atol=1e-5)
        assert torch.allclose(I_short[0, 2:], I_long[0, 1:4], atol=1e-5)


def test_padding_invariance():
    model = tiny_model().eval()
    a, b = torch.tensor([[0, 3, 1]]), torch.tensor([[7, 7, 7, 7, 0, 3, 1]])
    for view in ("x", "xy"):
        Ha, Ia = model.encode(a, view)
        Hb, Ib = model.encode(b, view)
        assert torch.allclose(Ha, Hb[:, 4:], atol=1e-5) and torch.allclose(Ia, Ib[:, 4:], atol=1e-5)
    hist = views([[0, 3, 1]], length=5), views([[0, 3, 1]], length=9)
    assert torch.allclose(model.score(hist[0]), model.score(hist[1]), atol=1e-5)


def test_image_matrix_is_frozen():
    model = tiny_model()
    model.train()
    before = model.E_img.clone()
    assert all(p is not model.E_img for p in model.parameters()) and not model.E_img.requires_grad
    assert "E_img" not in model.state_dict()  # the data's, not the checkpoint's
    opt = torch.optim.Adam(model.parameters(), lr=0.1, weight_decay=0.1)
    t = make_train_set([[0, 3, 1, 4, 2]], num_x=3, max_len=5, pad=7)
    id_before = model.E_id.weight.detach().clone()
    loss, _ = model.loss(t.inputs, t.targets)
    loss.backward()
    opt.step()
    assert torch.equal(model.E_img, before)
    assert not torch.equal(model.E_id.weight, id_before)  # while the ID matrix learns


def test_each_branch_probability_sums_to_one():
    torch.manual_seed(1)
    h, E_rows = torch.randn(4, 6), torch.randn(50, 6)
    for alpha in (0.0, 0.3, 1.0):
        P = log_prob(h, E_rows, torch.randn(4, 3), torch.randn(50, 3), alpha, 0.05).exp()
        assert torch.allclose(P.sum(1), torch.ones(4), atol=1e-5)


def test_no_multi_attention_uses_only_the_merged_view():
    model = tiny_model(multi=False)
    assert set(model.enc_id) == {"xy"} and set(model.enc_img) == {"xy"}
    assert math.isclose(model.score(views([[0, 3]])).sum().item(), 1.0, rel_tol=1e-5)


@pytest.mark.parametrize("field", sorted(RANGES))
def test_config_check_refuses_every_numeric_field_out_of_its_range(field):
    """Config.check is an API user's only guard (the command line has its own): below, above, NaN, a bool
    or a string for any numeric field is a ConfigError naming the field, in Config() and in replace()."""
    low, high = RANGES[field]
    step = 1 if isinstance(low, int) else abs(high - low) / 10 or 1.0
    for value in (low - step, high + step, math.nan, True, "1"):
        with pytest.raises(ConfigError, match=f"^{field} = "):
            Config(**{field: value}).check()
        with pytest.raises(ConfigError, match=f"^{field} = "):
            Config().replace(**{field: value})
    Config(**{field: low}).replace(**{field: high})  # both ends are accepted
