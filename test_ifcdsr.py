"""Equation-level and behavioural tests of the model (ifcdsr.py; paper: Wu et al., WWW Companion 2025).

Each equation test has a tiny example whose numbers are worked out by hand in its docstring.
"""
import math

import pytest
import torch

from conftest import TINY, full_batch_losses, tiny_model, views
from data import load_scenario, make_demo, make_train_set
from ifcdsr import IFCDSR, RANGES, AttentionEncoder, Config, ConfigError, log_prob, similarity, trim, unit


# ----------------------------------------------------------------------------- equations


def test_eq1_attention_is_a_causal_masked_average_when_queries_are_blind():
    """Eq. 1 with one block whose query/key weights are zero: every allowed key scores the same,
    so position t attends uniformly to the real items j <= t. With identity value/output maps,
    a zero feed-forward and zero positions:  H_t = LN_f(F_t + mean_{j<=t, j real} LN_1(F_j)).
    For F = [pad, a, b]: H_2 = LN_f(b + (LN_1(a) + LN_1(b)) / 2), H_1 = LN_f(a + LN_1(a))."""
    torch.manual_seed(0)
    enc = AttentionEncoder(4, Config(n_blocks=1, n_heads=1, dropout=0.0)).eval()
    block = enc.blocks[0]
    with torch.no_grad():
        enc.positions.weight.zero_()
        block.attn.qkv.weight.zero_()
        block.attn.qkv.bias.zero_()
        block.attn.qkv.weight[8:].copy_(torch.eye(4))  # V = x
        block.attn.out.weight.copy_(torch.eye(4))
        block.attn.out.bias.zero_()
        for p in block.ffn.parameters():
            p.zero_()
    F_seq = torch.randn(1, 3, 4)
    is_pad = torch.tensor([[True, False, False]])
    H = enc(F_seq, is_pad)
    a, b = F_seq[0, 1], F_seq[0, 2]
    ln1, lnf = block.ln_1, enc.ln_f
    assert torch.allclose(H[0, 1], lnf(a + ln1(a)), atol=1e-5)
    assert torch.allclose(H[0, 2], lnf(b + (ln1(a) + ln1(b)) / 2), atol=1e-5)


def test_eq2_cosine_similarity_by_hand():
    """h = (3, 4), ‖h‖ = 5; E rows (1, 0), (0, 2), (0, 0):
    cos = 3/5 = 0.6, 8/10 = 0.8, and 0 for the zero row (an item without an image).
    With τ = 0.5 the scores double: 1.2, 1.6, 0."""
    h = torch.tensor([[3.0, 4.0]])
    E = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    assert torch.allclose(similarity(h, unit(E), 1.0), torch.tensor([[0.6, 0.8, 0.0]]))
    assert torch.allclose(similarity(h, unit(E), 0.5), torch.tensor([[1.2, 1.6, 0.0]]))


E3 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
P_ID = torch.tensor([0.66524096, 0.24472847, 0.09003057])  # softmax(1, 0, -1)


def test_eq3_eq4_softmax_over_cosine_by_hand():
    """h = (1, 0) against E rows (1,0), (0,1), (-1,0): cos = 1, 0, -1 (τ = 1), so
    P = (e, 1, 1/e) / (e + 1 + 1/e) = 2.71828/4.08616, 1/4.08616, 0.36788/4.08616
      = 0.66524, 0.24473, 0.09003 — the same formula for the ID (Eq. 3) and image (Eq. 4) branch."""
    h = torch.tensor([[1.0, 0.0]])
    P = log_prob(h, E3, None, None, alpha=1.0, temperature=1.0).exp()
    assert torch.allclose(P[0], P_ID, atol=1e-6)
    assert torch.allclose(P.sum(), torch.tensor(1.0))


def test_eq3_eq4_as_printed_each_view_has_its_own_domains_softmax():
    """Eq. 3/4 as printed run the softmax over E^X, the items of S^X's domain. With |X| = 3 items at
    (1,0), (0,1), (-1,0) and one Y item at (0,-1), h = (1, 0) (τ = 1) has cosines (1, 0, -1 | 0):
    over all N items P(x_0) = e / (e + 1 + 1/e + 1) = 2.71828/5.08616 = 0.53445; over X alone it is
    0.66524, as in the test above. `softmax_items` gives S^X the X items, S^Y the Y items, S^{X+Y} all."""
    E = torch.cat([E3, torch.tensor([[0.0, -1.0]])])
    h = torch.tensor([[1.0, 0.0]])
    assert math.isclose(log_prob(h, E, None, None, 1.0, 1.0).exp()[0, 0].item(), 0.53445, rel_tol=1e-4)
    model = tiny_model()  # |X| = 3, |Y| = 4; softmax_over = "domain" by default
    assert [model.softmax_items(v) for v in ("x", "y", "xy")] == [slice(0, 3), slice(3, 7), slice(0, 7)]
    assert math.isclose(log_prob(h, E[model.softmax_items("x")], None, None, 1.0, 1.0).exp()[0, 0].item(), 0.66524,
                        rel_tol=1e-5)
    assert all(tiny_model(softmax_over="all").softmax_items(v) == slice(0, 7) for v in ("x", "y", "xy"))


def test_eq5_alpha_mixture_by_hand():
    """P_id = (0.66524, 0.24473, 0.09003) from h_id = (1, 0); h_img = (-1, 0) gives the reverse,
    P_img = (0.09003, 0.24473, 0.66524). With α = 0.7:
    P = 0.7·P_id + 0.3·P_img = (0.46567 + 0.02701, 0.17131 + 0.07342, 0.06302 + 0.19957)
      = (0.49268, 0.24473, 0.26259); α = 1 gives P_id, α = 0 gives P_img."""
    h_id, h_img = torch.tensor([[1.0, 0.0]]), torch.tensor([[-1.0, 0.0]])
    P = log_prob(h_id, E3, h_img, E3, alpha=0.7, temperature=1.0).exp()[0]
    assert torch.allclose(P, torch.tensor([0.49268, 0.24473, 0.26259]), atol=1e-5)
    assert torch.allclose(log_prob(h_id, E3, h_img, E3, 1.0, 1.0).exp()[0], P_ID, atol=1e-6)
    assert torch.allclose(log_prob(h_id, E3, h_img, E3, 0.0, 1.0).exp()[0], P_ID.flip(0), atol=1e-6)
    # log space stays finite where probabilities underflow: τ = 1e-3 makes logits ±1000
    lp = log_prob(h_id, E3, h_img, E3, 0.7, 1e-3)
    assert torch.isfinite(lp).all() and math.isclose(lp.exp().sum().item(), 1.0, rel_tol=1e-5)


def test_eq6_nll_sums_minus_log_p_of_each_next_item():
    """Two positions, both h_id = (1, 0) (P_id as in Eq. 3's test), targets 0 and 2:
    Σ -log P = -log 0.66524 - log 0.09003 = 0.40760 + 2.40760 = 2.81520, computed as `IFCDSR.loss`
    computes each view's sum on its plain path (log_prob, then the targets' entries)."""
    h = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    target = torch.tensor([0, 2])
    nll = -log_prob(h, E3, None, None, 1.0, 1.0).gather(1, target[:, None]).sum()
    assert math.isclose(nll.item(), 2.81520, rel_tol=1e-5)


def test_eq6_training_positions_are_every_next_item_of_each_view():
    """Sequence a(X)=0, b(Y)=3, c(X)=1, d(Y)=4 with |X| = 3 and pad 7:
    S^X = [0, 1] trains 0 -> 1;  S^Y = [3, 4] trains 3 -> 4;  S^{X+Y} trains 0->3, 3->1, 1->4."""
    t = make_train_set([[0, 3, 1, 4]], num_x=3, max_len=4, pad=7)
    pairs = {v: [(i, n) for i, n in zip(getattr(t.inputs, v)[0].tolist(), getattr(t.targets, v)[0].tolist())
                 if n != 7] for v in ("x", "y", "xy")}
    assert pairs == {"x": [(0, 1)], "y": [(3, 4)], "xy": [(0, 3), (3, 1), (1, 4)]}


@pytest.mark.parametrize("loss_norm", ["mean", "sum"])
@pytest.mark.parametrize("target,weights", [("X", {"x": 1.0, "y": 0.1, "xy": 0.4}),
                                            ("Y", {"y": 1.0, "x": 0.1, "xy": 0.4})])
def test_eq7_loss_weights_target_source_and_merged_views(target, weights, loss_norm):
    """Eq. 7: L = L^X + λ1·L^Y + λ2·L^{X+Y} with λ1 = 0.1, λ2 = 0.4 when X is the target;
    the roles swap for target Y. The total equals the weighted sum of per-view NLLs recomputed here
    from Eq. 1-6 directly, each view over its own items: each view's mean over its positions ("mean"), or
    its sum divided by the same B·L = 2·15 = 30 for every view ("sum", Eq. 6 as printed)."""
    assert Config(target=target).view_weights() == weights
    model = tiny_model(target=target, loss_norm=loss_norm).eval()
    t = make_train_set([[0, 3, 1, 4, 2], [5, 0, 6, 1]], num_x=3, max_len=5, pad=7)
    total, parts = model.loss(t.inputs, t.targets)
    E_id, E_img = model.item_matrices()
    expected = 0.0
    for v, w in weights.items():
        seq, nxt = getattr(t.inputs, v), getattr(t.targets, v)
        H_id, H_img = model.encode(seq, v)
        keep, own = nxt != 7, model.softmax_items(v)
        lp = log_prob(H_id[keep], E_id[own], H_img[keep], E_img[own], 0.7, model.cfg.temperature)
        nll = -lp.gather(1, nxt[keep][:, None] - own.start)
        L_v = nll.mean() if loss_norm == "mean" else nll.sum() / 30
        assert math.isclose(parts[v], L_v.item(), rel_tol=1e-5)
        expected = expected + w * L_v
    assert torch.allclose(total, expected)


@pytest.mark.parametrize("temperature", [0.1, 0.01])
def test_eq8_combines_views_at_their_last_position_and_empty_view_is_uniform(temperature):
    """Eq. 8: P = P^X + λ1·P^Y + λ2·P^{X+Y}, each view read at its last item. History [0, 1]
    has no Y item, so P^Y = 1/N = 1/7 for every item (every view's softmax over all N items); the total
    mass is 1 + 0.1 + 0.4 = 1.5. Scoring a slice of the items gives those columns of the whole."""
    model = tiny_model(temperature=temperature, softmax_over="all").eval()
    hist = views([[0, 3, 1], [0, 1]])
    score = model.score(hist)  # (2, 7)
    assert torch.equal(model.score(hist, slice(3, 7)), score[:, 3:])
    E_id, E_img = model.item_matrices()
    parts = {}
    for v in ("x", "y", "xy"):
        H_id, H_img = model.encode(trim(model.pad, getattr(hist, v))[0], v)
        parts[v] = log_prob(H_id[:, -1], E_id, H_img[:, -1], E_img, 0.7, model.cfg.temperature).exp()
    parts["y"][1] = 1 / 7
    expected = parts["x"] + 0.1 * parts["y"] + 0.4 * parts["xy"]
    assert torch.allclose(score, expected, atol=1e-6)
    assert torch.allclose(score.sum(1), torch.tensor([1.5, 1.5]), atol=1e-5)


def test_eq8_as_printed_the_source_view_gives_no_mass_to_target_domain_items():
    """With softmax_over = "domain", P^Y is a distribution over Y, so for target X, Eq. 8 over the X items
    is P^X + 0.4·P^{X+Y} (P^Y(x_i) = 0), and over the Y items 0.1·P^Y + 0.4·P^{X+Y}. History [0, 1] has no
    Y item: its P^Y is uniform over the 4 Y items, 1/4 each. The mass is still 1 + 0.1 + 0.4 = 1.5."""
    model = tiny_model(softmax_over="domain").eval()
    hist = views([[0, 3, 1], [0, 1]])
    E_id, E_img = model.item_matrices()
    P = {}
    for v in ("x", "y", "xy"):
        own = model.softmax_items(v)
        H_id, H_img = model.encode(trim(model.pad, getattr(hist, v))[0], v)
        P[v] = log_prob(H_id[:, -1], E_id[own], H_img[:, -1], E_img[own], 0.7, model.cfg.temperature).exp()
    P["y"][1] = 1 / 4
    assert torch.allclose(model.score(hist, slice(0, 3)), P["x"] + 0.4 * P["xy"][:, :3], atol=1e-6)
    assert torch.allclose(model.score(hist, slice(3, 7)), 0.1 * P["y"] + 0.4 * P["xy"][:, 3:], atol=1e-6)
    assert torch.allclose(model.score(hist).sum(1), torch.tensor([1.5, 1.5]), atol=1e-5)


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
    h, E = torch.randn(4, 6), torch.randn(50, 6)
    for alpha in (0.0, 0.3, 1.0):
        P = log_prob(h, E, torch.randn(4, 3), torch.randn(50, 3), alpha, 0.05).exp()
        assert torch.allclose(P.sum(1), torch.ones(4), atol=1e-5)


def test_no_multi_attention_uses_only_the_merged_view():
    model = tiny_model(multi=False)
    assert set(model.enc_id) == {"xy"} and set(model.enc_img) == {"xy"}
    assert math.isclose(model.score(views([[0, 3]])).sum().item(), 1.0, rel_tol=1e-5)


def test_a_few_training_steps_lower_the_loss(tmp_path):
    scen = load_scenario(make_demo(tmp_path / "demo", seed=0, spec=TINY), max_len=15, use_images=True)
    torch.manual_seed(0)
    model = IFCDSR(Config(q=32), scen.items.num_x, scen.items.num_y, scen.E_img)
    model.eval()  # no dropout, so the loss is a deterministic function of the weights
    losses, _ = full_batch_losses(model, scen.train)
    assert losses[-1] < 0.98 * losses[0]


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
