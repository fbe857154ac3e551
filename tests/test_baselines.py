"""Tests of baselines.py: SASRec's block is the one its code runs (the queries alone normalised, each residual on
the normalised input, no dropout on the attention output) after item embeddings scaled by √q; SASRec and GRU4Rec
are causal; the merged rows read S^{X+Y}, train over all N items and rank the target domain's, and learn a next
target item that the last source-domain item sets, which the target-only rows read and score only the target
domain and cannot; the popularity score counts training interactions."""
import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import data
from baselines import GRU4Rec, GRU4RecTarget, SASRec, SASRecTarget, cross_entropy_sum, popularity
from conftest import TINY, full_batch_losses, line, run_cli, views, write_scenario
from data import load_scenario, make_demo, make_train_set
from ifcdsr import Config

MERGED = (SASRec, GRU4Rec)
TARGET_ONLY = (SASRecTarget, GRU4RecTarget)
MODELS = MERGED + TARGET_ONLY


def tiny(cls, target="X", seed=0, **kw):
    torch.manual_seed(seed)
    return cls(Config(q=8, dropout=0.0, target=target, **kw), num_x=3, num_y=4).eval()


def sasrec_block(q=2, dropout=0.0):
    """The first block of a SASRec of width q, one head; as SASRec.encoder builds it, so a SASRec row built
    with another block fails the tests below."""
    torch.manual_seed(0)
    return SASRec(Config(q=q, n_heads=1, dropout=dropout), num_x=3, num_y=4).encoder.blocks[0]


def test_sasrec_block_normalises_only_the_queries_and_adds_each_residual_to_the_normalised_input():
    """Width 2, W^Q = W^K = W^V = W^O = W^(1) = W^(2) = I and zero biases, x_1 = (1, 3), x_2 = (2, 0):
    Q = LayerNorm(x) = (-1, 1), (1, -1); the keys and values are x itself. x_1 sees only itself:
    S_1 = Q_1 + x_1 = (0, 4). x_2's scores are Q_2·x_1/√2 = -√2 and Q_2·x_2/√2 = +√2, weights
    1/(1 + e^{2√2}) = 0.0558 and 0.9442: S_2 = (1, -1) + 0.0558·(1, 3) + 0.9442·(2, 0) = (2.9442, -0.8326).
    G = LayerNorm(S) = (-1, 1), (1, -1) and F = G + ReLU(G) = (-1, 2), (2, -1).
    IFCDSR's block (LayerNorm on Q, K and V, residuals on x) gives S_2 = (2.8884, -0.8884) and F_1 = (0, 5)."""
    block = sasrec_block().eval()
    with torch.no_grad():
        for layer in (block.W_Q, block.W_K, block.W_V, block.W_O, block.ffn[0], block.ffn[3]):
            layer.weight.copy_(torch.eye(2))
            layer.bias.zero_()
    seen = {}
    block.ln_2.register_forward_hook(lambda module, inputs, output: seen.update(S=inputs[0]))
    F_out = block(torch.tensor([[[1.0, 3.0], [2.0, 0.0]]]), torch.ones(1, 2, 2, dtype=torch.bool).tril())
    assert torch.allclose(seen["S"], torch.tensor([[[0.0, 4.0], [2.9442, -0.8326]]]), atol=1e-4)
    assert torch.allclose(F_out, torch.tensor([[[-1.0, 2.0], [2.0, -1.0]]]), atol=1e-4)


def test_sasrec_block_has_no_dropout_on_the_attention_output():
    """Training with dropout 0.5 (on the attention weights and in the FFN): S = Q + Attention(...)·W^O exactly,
    the attention output as W^O gives it, not dropped."""
    block, seen = sasrec_block(q=8, dropout=0.5).train(), {}
    block.ln_1.register_forward_hook(lambda module, inputs, output: seen.update(Q=output))
    block.W_O.register_forward_hook(lambda module, inputs, output: seen.update(out=output))
    block.ln_2.register_forward_hook(lambda module, inputs, output: seen.update(S=inputs[0]))
    block(torch.randn(2, 5, 8), torch.ones(2, 5, 5, dtype=torch.bool).tril())
    assert torch.equal(seen["S"], seen["Q"] + seen["out"])


def test_sasrec_scales_the_item_embeddings_by_the_square_root_of_q_before_adding_the_positions():
    """q = 4 and no blocks: H = LayerNorm(√q·E_i + P_1). E_0 = (1, 0, 0, -1) and P_1 = (1, 1, -1, -1) give
    2·E_0 + P_1 = (3, 1, -1, -3), mean 0 and variance 5, so h = (3, 1, -1, -3)/√5 = (1.342, 0.447, -0.447, -1.342);
    unscaled, E_0 + P_1 = (2, 1, -1, -2) would give (1.265, 0.632, -0.632, -1.265)."""
    model = SASRec(Config(q=4, n_blocks=0, dropout=0.0), num_x=3, num_y=4).eval()
    with torch.no_grad():
        model.E.weight[0] = torch.tensor([1.0, 0.0, 0.0, -1.0])
        model.encoder.positions.weight[0] = torch.tensor([1.0, 1.0, -1.0, -1.0])
    h = model.hidden(torch.tensor([[0]]))[0, 0]
    assert torch.allclose(h, torch.tensor([1.342, 0.447, -0.447, -1.342]), atol=1e-3)


@pytest.mark.parametrize("cls", MODELS)
def test_causal_a_later_item_never_changes_an_earlier_output(cls):
    """Domain Y (ids 3..6, pad 7): positions of [3, 5] are the same whether 6 follows them or not."""
    model = tiny(cls, "Y")
    short, long_ = torch.tensor([[7, 7, 3, 5]]), torch.tensor([[7, 3, 5, 6]])
    assert torch.allclose(model.hidden(short)[0, 2:], model.hidden(long_)[0, 1:3], atol=1e-6)


@pytest.mark.parametrize("cls", MODELS)
def test_left_padding_changes_nothing(cls):
    model = tiny(cls, "Y")
    a, b = torch.tensor([[3, 5, 6]]), torch.tensor([[7, 7, 7, 3, 5, 6]])
    assert torch.allclose(model.hidden(a), model.hidden(b)[:, 3:], atol=1e-6)


@pytest.mark.parametrize("cls", (GRU4Rec, GRU4RecTarget))
def test_the_gru_reads_each_left_padded_sequence_as_if_alone(cls):
    """A batch of histories of lengths 3, 1 and 0 (domain Y, pad 7): each row's outputs are the GRU's over that
    history alone, and 0 at the padding."""
    model = tiny(cls, "Y")
    seq = torch.tensor([[7, 3, 5, 6], [7, 7, 7, 4], [7, 7, 7, 7]])
    H = model.hidden(seq)
    for row, length in ((0, 3), (1, 1)):
        alone = model.encoder.gru(model.E(seq[row:row + 1, -length:] - model.vocab.start))[0]  # (1, length, q)
        assert torch.allclose(H[row:row + 1, -length:], alone, atol=1e-6)
    assert (H[0, 0] == 0).all() and (H[1, :3] == 0).all() and (H[2] == 0).all()


@pytest.mark.parametrize("cls", TARGET_ONLY)
@pytest.mark.parametrize("target", ["X", "Y"])
def test_reads_only_the_target_domain_and_scores_only_its_items(cls, target):
    """The other domain's items in the history change nothing; the scores cover the target domain's items
    (3 of X, 4 of Y) and asking for any other items is an error."""
    model = tiny(cls, target)
    own, other = (slice(0, 3), slice(3, 7)) if target == "X" else (slice(3, 7), slice(0, 3))
    a, b = views([[0, 3, 1, 4]]), views([[0, 5, 1, 6, 3]])  # same X items, other Y items
    c, d = views([[0, 3, 1, 4]]), views([[2, 3, 2, 4]])  # same Y items, other X items
    same = (a, b) if target == "X" else (c, d)
    assert torch.allclose(model.score(same[0], own), model.score(same[1], own), atol=1e-6)
    assert model.score(a, own).shape == (1, own.stop - own.start)
    with pytest.raises(ValueError, match="embeds the items"):
        model.score(a, other)


@pytest.mark.parametrize("cls", MERGED)
@pytest.mark.parametrize("target", ["X", "Y"])
def test_merged_reads_both_domains_and_scores_either_domains_items(cls, target):
    """The source domain's items in the history change the target domain's scores; the scores are the dot
    products of the last hidden state of S^{X+Y} with a domain's rows of E (3 of X, 4 of Y): the target's, or
    the other's (one training serves both target domains, train.Trainer)."""
    model = tiny(cls, target)
    own, other = (slice(0, 3), slice(3, 7)) if target == "X" else (slice(3, 7), slice(0, 3))
    a, b = views([[0, 3, 1, 4]]), views([[0, 5, 1, 6]])  # same X items, other Y items
    c, d = views([[0, 3, 1, 4]]), views([[2, 3, 2, 4]])  # same Y items, other X items
    source = (a, b) if target == "X" else (c, d)
    assert not torch.allclose(model.score(source[0], own), model.score(source[1], own), atol=1e-4)
    h = model.hidden(a.xy)[:, -1]  # (1, q)
    for items in (own, other):
        assert torch.allclose(model.score(a, items), h @ model.E.weight[items].T, atol=1e-6)
    with pytest.raises(ValueError, match="embeds the items"):
        model.score(a, slice(0, 8))


@pytest.mark.parametrize("cls", MERGED)
def test_merged_loss_is_the_cross_entropy_over_all_items_at_every_next_item_of_the_merged_sequence(cls):
    """Sequences [0, 3, 1, 4] and [5, 2] (N = 7): the next items 3, 1, 4 and 2 (both domains) are the targets
    of the four positions with an input; each term is -log softmax(h·E^T) over all 7 items, computed here one
    position at a time."""
    model = tiny(cls)
    train = make_train_set([[0, 3, 1, 4], [5, 2]], num_x=3, max_len=5, pad=7)
    loss, parts = model.loss(train.inputs, train.targets)
    terms = []
    for seq in ([0, 3, 1, 4], [5, 2]):
        for t in range(1, len(seq)):
            h = model.hidden(torch.tensor([seq[:t]]))[0, -1]  # (q,)
            terms.append(-F.log_softmax(model.E.weight[:7] @ h, dim=0)[seq[t]])
    assert len(terms) == 4 and set(parts) == {"xy"}
    assert torch.allclose(loss, torch.stack(terms).mean(), atol=1e-5)


def test_chunked_cross_entropy_equals_the_plain_one_in_value_and_gradient():
    """7 positions over 11 items (and a padding row), 3 positions at a time by fused_loss.nll_dot (the last
    chunk of 1) against all at once; logits up to about ±100, so the chunks must subtract each row's maximum."""
    torch.manual_seed(0)
    H, E, y = 10 * torch.randn(7, 4), 5 * torch.randn(12, 4), torch.randint(0, 11, (7,))
    grads = []
    for chunk in (10**9, 3 * 11):
        H_, E_ = H.clone().requires_grad_(), E.clone().requires_grad_()
        value = cross_entropy_sum(H_, E_, y, 11, chunk)
        value.backward()
        grads.append((value.detach(), H_.grad, E_.grad))
    assert (H @ E[:11].T).abs().max() > 60 and grads[0][2][11].abs().max() == 0
    for plain, chunked in zip(*grads):
        assert torch.allclose(plain, chunked, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("cls", MERGED)
def test_the_loss_in_chunks_gives_the_same_loss_and_gradient(cls):
    """score_chunk = 40 over N = 7 items: 2·6·7 logits and gradients do not fit, so fused_loss.nll_dot scores
    5 positions at a time (40 // 7) instead of all 6 at once."""
    train = make_train_set([[0, 3, 1, 4], [5, 2, 6, 0]], num_x=3, max_len=5, pad=7)
    results = []
    for chunk in (0, 40):
        model = tiny(cls, score_chunk=chunk)
        loss, _ = model.loss(train.inputs, train.targets)
        loss.backward()
        results.append((loss.detach(), model.E.weight.grad))
    for plain, chunked in zip(*results):
        assert torch.allclose(plain, chunked, atol=1e-6)


@pytest.mark.parametrize("cls", MODELS)
def test_a_few_training_steps_lower_the_loss(cls, tmp_path):
    scen = load_scenario(make_demo(tmp_path / "demo", seed=0, **TINY), max_len=15, use_images=False)
    torch.manual_seed(0)
    model = cls(Config(q=32, dropout=0.0, target="Y"), scen.items.num_x, scen.items.num_y)
    losses, parts = full_batch_losses(model, scen.train, lr=1e-2)
    assert set(parts) == {"xy" if cls.merged else "y"} and losses[-1] < losses[0] - 0.1


def test_merged_rows_learn_a_next_target_item_set_by_the_last_source_item(tmp_path):
    """10 X and 10 Y items; every Y item is always followed by the same X item, and each history alternates a
    random Y item with the X item it sets. From S^{X+Y} the next X item is known; from S^X alone it is random
    (chance: a full-ranking MRR of H_10/10 = 29.3%). After 4 epochs, through train.py's loop, the merged rows'
    test MRR (full ranking of X) is more than 30 points above the target-only rows' of the same model (88%
    against 27-30% here), and each row's loss is logged under the view it reads."""
    rng = random.Random(0)
    follows = list(range(10))
    rng.shuffle(follows)  # Y item 10 + k is always followed by X item follows[k]

    def user(u, pairs):
        ys = [rng.randrange(10) for _ in range(pairs)]
        return line(u, *((i, t) for t, i in enumerate(item for y in ys for item in (10 + y, follows[y]))))

    lines = [user(u, 4) for u in range(220)]
    folder = write_scenario(tmp_path / "s", lines[:100], lines[100:160], lines[160:], num_x=10, num_y=10)
    out = tmp_path / "run"
    assert run_cli("--data-dir", folder, "--models", "gru4rec,sasrec,gru4rec_target,sasrec_target", "--target", "X",
                   "--epochs", 4, "--batch-size", 32, "--lr", 1e-2, "--set", "q=16", "dropout=0", "--device", "cpu",
                   "--out", out) == 0
    runs = json.loads((out / "results.json").read_text())["runs"]
    mrr = {m: runs[m][0]["test"]["X"]["full"]["MRR"] for m in runs}
    for merged in ("sasrec", "gru4rec"):
        assert mrr[merged] > mrr[merged + "_target"] + 30, mrr
        assert {view for h in runs[merged][0]["history"]["X"] for view in h["loss"]} == {"xy"}
        assert {view for h in runs[merged + "_target"][0]["history"]["X"] for view in h["loss"]} == {"x"}


def test_popularity_counts_every_training_interaction_once():
    """Training sequences [0, 3, 0, 4] and [0, 1] count items 0..6 as 3, 1, 0, 1, 1, 0, 0, popularity's scores:
    targets 0, 1, 2 rank 1, 2, 3 among domain X's items; targets 3 and 5 rank 1 + ½ (tied with 4) and 1 + 2 + ½
    (below 3 and 4, tied with 6) among domain Y's."""
    t = make_train_set([[0, 3, 0, 4], [0, 1]], num_x=3, max_len=15, pad=7)
    assert data.item_counts(t, 7).tolist() == [3, 1, 0, 1, 1, 0, 0]
    cases = data.EvalSet(views([[1]] * 5), torch.tensor([0, 1, 2, 3, 5]))
    scen = data.Scenario("t", Path("."), data.Items(["a"] * 7, 3, 4), t, cases, cases, None, "t", None)
    assert popularity(scen, "X", 2)["ranks"]["full"].tolist() == [1.0, 2.0, 3.0]
    assert popularity(scen, "Y", 2)["ranks"]["full"].tolist() == [1.5, 3.5]
