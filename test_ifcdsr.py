"""Equation-level and behavioural tests of IFCDSR (paper: ../shared/paper/IFCDSR.md).

Each equation test has a tiny example whose numbers are worked out by hand in its docstring.
"""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import data
import train
from data import DataError, DemoSpec, EvalSet, Views, make_demo, make_eval_set, make_train_set
from ifcdsr import IFCDSR, AttentionEncoder, Config, _nll_sum, log_prob, nll, similarity, unit

SHARED = Path(__file__).resolve().parent.parent / "shared" / "data"
TINY = DemoSpec(num_x=40, num_y=50, num_users=90, image_dim=8, categories=4)


def tiny_model(use_image=True, multi=True, target="X", seed=0, **kw):
    torch.manual_seed(seed)
    cfg = Config(q=8, use_image=use_image, multi_attention=multi, target=target, dropout=0.0, **kw)
    E_img = torch.randn(7, 4) if use_image else None
    return IFCDSR(cfg, num_x=3, num_y=4, E_img=E_img)


def views(rows, num_x=3, length=5, pad=7):
    return data._views(rows, num_x, length, pad)


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
    Σ -log P = -log 0.66524 - log 0.09003 = 0.40760 + 2.40760 = 2.81520.
    The fused, chunked loss (gradients formed while scoring, whole or 2 or 1 positions per chunk) gives
    the value and gradients of the plain computation through log_prob and autograd (`_nll_sum`)."""
    h = torch.tensor([[1.0, 0.0], [1.0, 0.0]], requires_grad=True)
    target = torch.tensor([0, 2])
    loss = nll(h, E3, None, None, target, 1.0, 1.0, chunk=10**9)
    assert math.isclose(loss.item(), 2.81520, rel_tol=1e-5)
    torch.manual_seed(0)
    h_id, h_img = torch.randn(9, 5, requires_grad=True), torch.randn(9, 3, requires_grad=True)
    E_id, E_img = unit(torch.randn(11, 5)).requires_grad_(), unit(torch.randn(11, 3))
    target = torch.randint(0, 11, (9,))
    plain = _nll_sum(h_id, E_id, h_img, E_img, target, 0.7, 0.1)
    expected = (plain.detach(), *torch.autograd.grad(plain, (h_id, h_img, E_id)))
    for chunk in (10**9, 22, 11):  # 22 // 11 = 2 positions per chunk
        out = nll(h_id, E_id, h_img, E_img, target, 0.7, 0.1, chunk)
        for a, b in zip(expected, (out.detach(), *torch.autograd.grad(out, (h_id, h_img, E_id)))):
            assert torch.allclose(a, b, atol=1e-5)


def test_eq6_training_positions_are_every_next_item_of_each_view():
    """Sequence a(X)=0, b(Y)=3, c(X)=1, d(Y)=4 with |X| = 3 and pad 7:
    S^X = [0, 1] trains 0 -> 1;  S^Y = [3, 4] trains 3 -> 4;  S^{X+Y} trains 0->3, 3->1, 1->4."""
    t = make_train_set([[0, 3, 1, 4]], num_x=3, max_len=4, pad=7)
    pairs = {v: [(i, n) for i, n in zip(getattr(t.inputs, v)[0].tolist(), getattr(t.targets, v)[0].tolist())
                 if n != 7] for v in ("x", "y", "xy")}
    assert pairs == {"x": [(0, 1)], "y": [(3, 4)], "xy": [(0, 3), (3, 1), (1, 4)]}


@pytest.mark.parametrize("target,weights", [("X", {"x": 1.0, "y": 0.1, "xy": 0.4}),
                                            ("Y", {"y": 1.0, "x": 0.1, "xy": 0.4})])
def test_eq7_loss_weights_target_source_and_merged_views(target, weights):
    """Eq. 7: L = L^X + λ1·L^Y + λ2·L^{X+Y} with λ1 = 0.1, λ2 = 0.4 when X is the target;
    the roles swap for target Y. The total equals the weighted sum of per-view mean NLLs
    recomputed here from Eq. 1-6 directly."""
    assert Config(target=target).view_weights() == weights
    model = tiny_model(target=target).eval()
    t = make_train_set([[0, 3, 1, 4, 2], [5, 0, 6, 1]], num_x=3, max_len=5, pad=7)
    total, parts = model.loss(t.inputs, t.targets)
    E_id, E_img = model.item_matrices()
    expected = 0.0
    for v, w in weights.items():
        seq, nxt = getattr(t.inputs, v), getattr(t.targets, v)
        H_id, H_img = model.encode(seq, v)
        keep = nxt != 7
        lp = log_prob(H_id[keep], E_id, H_img[keep], E_img, 0.7, model.cfg.temperature)
        L_v = -lp.gather(1, nxt[keep][:, None]).mean()
        assert math.isclose(parts[v], L_v.item(), rel_tol=1e-5)
        expected = expected + w * L_v
    assert torch.allclose(total, expected)


@pytest.mark.parametrize("temperature", [0.1, 0.01])  # exp without and with the row maximum (`_exp_`)
def test_eq8_combines_views_at_their_last_position_and_empty_view_is_uniform(temperature):
    """Eq. 8: P = P^X + λ1·P^Y + λ2·P^{X+Y}, each view read at its last item. History [0, 1]
    has no Y item, so P^Y = 1/N = 1/7 for every item; the total mass is 1 + 0.1 + 0.4 = 1.5.
    Scoring a slice of the items gives those columns of the whole."""
    model = tiny_model(temperature=temperature).eval()
    hist = views([[0, 3, 1], [0, 1]])
    score = model.score(hist)  # (2, 7)
    assert torch.equal(model.score(hist, slice(3, 7)), score[:, 3:])
    E_id, E_img = model.item_matrices()
    parts = {}
    for v in ("x", "y", "xy"):
        H_id, H_img = model.encode(model.trim(getattr(hist, v))[0], v)
        parts[v] = log_prob(H_id[:, -1], E_id, H_img[:, -1], E_img, 0.7, model.cfg.temperature).exp()
    parts["y"][1] = 1 / 7
    expected = parts["x"] + 0.1 * parts["y"] + 0.4 * parts["xy"]
    assert torch.allclose(score, expected, atol=1e-6)
    assert torch.allclose(score.sum(1), torch.tensor([1.5, 1.5]), atol=1e-5)


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
    scen = data.load_scenario(make_demo(tmp_path / "demo", seed=0, spec=TINY), max_len=15, use_images=True)
    torch.manual_seed(0)
    model = IFCDSR(Config(q=32), scen.items.num_x, scen.items.num_y, scen.E_img)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.eval()  # no dropout, so the loss is a deterministic function of the weights
    losses = []
    for _ in range(8):
        loss, _ = model.loss(scen.train.inputs, scen.train.targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1


# ----------------------------------------------------------------------------- evaluation


def test_metrics_on_known_ranks():
    """Ranks 1, 2, 10, 11: MRR = (1 + 1/2 + 1/10 + 1/11)/4 = 0.42273;
    NDCG@5 = (1 + 1/log2 3)/4 = 0.40773; NDCG@10 adds 1/log2 11 = 0.28906 -> 0.47999;
    HR@1 = 1/4, HR@5 = 2/4, HR@10 = 3/4."""
    m = train.rank_metrics(torch.tensor([1, 2, 10, 11]))
    expected = {"MRR": 42.273, "NDCG@5": 40.773, "NDCG@10": 47.999, "HR@1": 25.0, "HR@5": 50.0, "HR@10": 75.0}
    for k, v in expected.items():
        assert math.isclose(m[k], v, abs_tol=1e-3), k


def test_rank_counts_only_strictly_higher_candidates():
    """Target-domain scores (5, 7, 5, 1) with ground truth item 0 (score 5): one candidate is
    strictly higher (7) and one ties (5), so rank = 2 under full ranking; negatives (2, 2, 3)
    are all lower or tied, so rank = 1 under the sampled protocol."""
    cases = EvalSet(views([[1]], num_x=4, pad=8), torch.tensor([0]))
    score_fn = lambda history, items: torch.tensor([[5.0, 7.0, 5.0, 1.0, 99.0, 99.0, 99.0, 99.0]])[:, items]
    res = train.evaluate(score_fn, cases, slice(0, 4), torch.tensor([[2, 2, 3]]), "cpu", 8)
    assert res["full"]["MRR"] == 50.0 and res["sampled999"]["MRR"] == 100.0


def test_negatives_are_deterministic_in_domain_and_never_the_target():
    cases = EvalSet(views([[1]] * 50, num_x=10, pad=30), torch.arange(10, 30).repeat(3)[:50])
    items = slice(10, 30)
    a, b = (train.negatives(cases, items, 3, "test", "Y") for _ in range(2))
    assert torch.equal(a, b) and a.shape == (50, 999)
    assert not torch.equal(a, train.negatives(cases, items, 4, "test", "Y"))
    assert not torch.equal(a, train.negatives(cases, items, 3, "valid", "Y"))
    local_target = (cases.target - 10)[:, None]
    assert (a != local_target).all() and a.min() >= 0 and a.max() <= 19
    assert len(torch.unique(a)) == 20  # every other item of the domain gets drawn


def test_popularity_counts_every_training_interaction_once():
    t = make_train_set([[0, 3, 0, 4], [0, 1]], num_x=3, max_len=15, pad=7)
    scen = data.Scenario("t", Path("."), data.Items(["a"] * 7, 3, 4), t, None, None, None)
    assert train.popularity_scores(scen).tolist() == [3, 1, 0, 1, 1, 0, 0]


# ----------------------------------------------------------------------------- data


def write_scenario(folder: Path, train_lines, valid_lines=None, test_lines=None, num_x=3, num_y=4):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Alist.txt").write_text("".join(f"{100 + i}\tA{i}\t{i}\n" for i in range(num_x)))
    (folder / "Blist.txt").write_text("".join(f"{200 + i}\tB{i}\t{i}\n" for i in range(num_y)))
    for name, lines in (("traindata_new.txt", train_lines), ("validdata_new.txt", valid_lines or train_lines),
                        ("testdata_new.txt", test_lines or train_lines)):
        (folder / name).write_text("".join(line + "\n" for line in lines))
    return folder


def line(user, *events):
    return f"{user}\t{user}\t" + "\t".join(f"{i}|{t}|2020-01-01 00:00:00|" for i, t in events)


def test_reader_sorts_by_time_and_splits_domains_at_num_x(tmp_path):
    """Items are stored out of time order; id 3 = |X| is the first item of domain Y (not X)."""
    folder = write_scenario(tmp_path / "s", [line(1, (3, 30), (0, 10), (2, 20), (1, 20))])
    assert data.read_sequences(folder / "traindata_new.txt", 7) == [[0, 2, 1, 3]]  # stable for ties
    scen = data.load_scenario(folder, max_len=15, use_images=False)
    assert scen.items.asins == ["A0", "A1", "A2", "B0", "B1", "B2", "B3"]
    assert scen.valid.target.tolist() == [3]
    assert train.eval_cases(scen.valid, scen, "Y").target.tolist() == [3]
    assert len(train.eval_cases(scen.valid, scen, "X")) == 0
    assert scen.valid.history.x[0, -3:].tolist() == [0, 2, 1] and (scen.valid.history.y == 7).all()


def test_histories_are_cut_to_the_last_max_len_items():
    ev = make_eval_set([list(range(20))], num_x=30, max_len=15, pad=30)
    assert ev.history.xy[0].tolist() == list(range(4, 19)) and ev.target.tolist() == [19]


@pytest.mark.parametrize("bad,found", [
    (line(1, (0, 1)) + "\t5|notatime|x|", "5|notatime|x|"),
    (line(1, (0, 1), (9, 2)), "item id 9 is out of range"),
    (line(1, (0, 1)), "at least 2 interactions"),
])
def test_bad_lines_name_file_and_line(tmp_path, bad, found):
    folder = write_scenario(tmp_path / "s", [line(1, (0, 1), (3, 2)), bad])
    with pytest.raises(DataError) as err:
        data.load_scenario(folder, max_len=15, use_images=False)
    assert "traindata_new.txt:2" in str(err.value) and found in str(err.value)


def test_bad_embeddings_and_missing_files(tmp_path):
    folder = write_scenario(tmp_path / "s", [line(1, (0, 1), (3, 2))])
    with pytest.raises(DataError, match="(?s)clip_loader.py embed.*--no-image"):
        data.load_scenario(folder, max_len=15, use_images=True)
    for array, found in ((np.zeros((6, 4), np.float32), "found \\(6, 4\\)"),
                         (np.zeros((7, 4), np.int64), "dtype int64"),
                         (np.full((7, 4), np.nan, np.float32), "row 0 .* non-finite")):
        np.save(folder / "image_embeddings.npy", array)
        with pytest.raises(DataError, match=found):
            data.load_scenario(folder, max_len=15, use_images=True)
    (folder / "Blist.txt").write_text("")
    with pytest.raises(DataError, match="Blist.txt: the file is empty"):
        data.read_items(folder)


def test_demo_is_deterministic(tmp_path):
    a, b = make_demo(tmp_path / "a", seed=5, spec=TINY), make_demo(tmp_path / "b", seed=5, spec=TINY)
    for f in ("Alist.txt", "traindata_new.txt", "testdata_new.txt", "image_embeddings.npy"):
        assert (a / f).read_bytes() == (b / f).read_bytes()
    assert (a / "traindata_new.txt").read_bytes() != (make_demo(tmp_path / "c", seed=6, spec=TINY)
                                                      / "traindata_new.txt").read_bytes()


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is absent")
def test_real_food_kitchen_counts():
    """../shared/data/README.md: |A| = 29,207, |B| = 34,886; valid 8,173 lines (A 2,722 / B 5,451),
    test 8,406 (A 2,747 / B 5,659); the derived scenario has 13,264 / 1,658 / 1,657 sequences."""
    folder = SHARED / "c2dsr" / "Food-Kitchen"
    items = data.read_items(folder)
    assert (items.num_x, items.num_y) == (29207, 34886)
    for split, total, in_x in (("validdata_new.txt", 8173, 2722), ("testdata_new.txt", 8406, 2747)):
        seqs = data.read_sequences(folder / split, items.num_items)
        targets = torch.tensor([s[-1] for s in seqs])
        assert len(seqs) == total and int((targets < items.num_x).sum()) == in_x
        assert all(6 <= len(s) <= 15 for s in seqs)
    scen = data.load_scenario(SHARED / "c2dsr-derived" / "Food-Kitchen", max_len=15, use_images=False)
    assert (len(scen.train), len(scen.valid), len(scen.test)) == (13264, 1658, 1657)


# ----------------------------------------------------------------------------- command line


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_demo(tmp_path_factory.mktemp("scen") / "tiny", seed=0, spec=TINY)


def run_cli(*args):
    return train.main([str(a) for a in args])


def test_cli_end_to_end_resume_and_eval_only(tiny_dir, tmp_path, capsys):
    out = tmp_path / "run"
    common = ("--data-dir", tiny_dir, "--epochs", 2, "--batch-size", 16, "--out", out)
    assert run_cli(*common) == 0
    printed = capsys.readouterr().out
    assert "Popularity" in printed and "IFCDSR (this run)" in printed
    res = json.loads((out / "results.json").read_text())
    for split in ("valid", "test"):
        for d in ("X", "Y"):
            assert set(res[split][d]) == set(train.PROTOCOLS)
            assert set(res[split][d]["full"]) == set(train.METRICS)
    assert set(res["popularity"]) == {"X", "Y"} and res["config"]["epochs"] == 2
    assert len(res["history"]["X"]) == 2 and (out / "best_X.pt").is_file() and (out / "best_Y.pt").is_file()

    # an existing run is never overwritten without --resume
    before = (out / "results.json").read_bytes()
    assert run_cli(*common) == 2 and "--resume" in capsys.readouterr().err
    assert (out / "results.json").read_bytes() == before

    # resuming a finished run retrains nothing and reproduces the same numbers
    assert run_cli(*common, "--resume") == 0
    assert json.loads((out / "results.json").read_text())["test"] == res["test"]

    assert run_cli("--data-dir", tiny_dir, "--eval-only", out / "best_X.pt") == 0
    assert f"MRR {res['test']['X']['sampled999']['MRR']:.2f}" in capsys.readouterr().out


def test_resume_after_interruption_gives_the_same_result(tiny_dir, tmp_path):
    common = ("--data-dir", tiny_dir, "--target", "X", "--batch-size", 16)
    assert run_cli(*common, "--epochs", 3, "--out", tmp_path / "straight") == 0
    # as if interrupted after one epoch: a 1-epoch run, resumed (and extended) to 3 epochs
    assert run_cli(*common, "--epochs", 1, "--out", tmp_path / "cut") == 0
    assert run_cli(*common, "--epochs", 3, "--out", tmp_path / "cut", "--resume") == 0
    a, b = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("straight", "cut"))
    assert a["test"] == b["test"] and a["valid"] == b["valid"]
    assert [h["loss"] for h in a["history"]["X"]] == [h["loss"] for h in b["history"]["X"]]
    # other settings than the schedule may not change
    assert run_cli(*common, "--epochs", 4, "--lr", 0.5, "--out", tmp_path / "cut", "--resume") == 2


@pytest.mark.parametrize("args,message", [
    (("--alpha", "1.5"), "alpha must lie in [0, 1]"),
    (("--scenario", "nope"), "unknown scenario 'nope'"),
    (("--data-dir", "/nonexistent/x"), "scenario directory not found"),
])
def test_cli_bad_input_exits_2_with_a_message(args, message, capsys, tmp_path):
    assert run_cli(*args, "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cli_rejects_a_checkpoint_of_another_scenario(tiny_dir, tmp_path, capsys):
    other = make_demo(tmp_path / "other", seed=1, spec=DemoSpec(num_x=41, num_y=50, num_users=90, image_dim=8))
    assert run_cli("--data-dir", tiny_dir, "--target", "X", "--epochs", 1, "--out", tmp_path / "r") == 0
    assert run_cli("--data-dir", other, "--eval-only", tmp_path / "r" / "best_X.pt") == 2
    assert "41+50" in capsys.readouterr().err
