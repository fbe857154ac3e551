"""Tests of data.py: the C2DSR reader, the tensors of the three views, image embeddings and the demo."""
import numpy as np
import pytest
import torch

import data
import train
from conftest import SHARED, TINY, line, write_scenario
from data import DataError, make_demo, make_eval_set


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


def test_a_long_training_sequence_keeps_its_latest_items():
    """A training sequence of 21 items (ids 0..20, all of domain X) with max_len = 5 trains on its last
    max_len + 1 = 6 items: inputs 15..19, next items 16..20."""
    t = data.make_train_set([list(range(21))], num_x=30, max_len=5, pad=30)
    assert t.inputs.xy[0].tolist() == [15, 16, 17, 18, 19] and t.targets.xy[0].tolist() == [16, 17, 18, 19, 20]


def test_histories_are_cut_to_the_last_max_len_items():
    ev = make_eval_set([list(range(20))], num_x=30, max_len=15, pad=30)
    assert ev.history.xy[0].tolist() == list(range(4, 19)) and ev.target.tolist() == [19]


@pytest.mark.parametrize("bad,found", [
    (line(1, (0, 1)) + "\t5|notatime|x|", "5|notatime|x|"),
    (line(1, (0, 1), (9, 2)), "an item id in 0..6, an item of Alist+Blist (the right scenario?), found '9|2|"),
    (line(1, (0, 1)), "at least 2 interactions"),
])
def test_bad_lines_name_file_and_line(tmp_path, bad, found):
    folder = write_scenario(tmp_path / "s", [line(1, (0, 1), (3, 2)), bad])
    with pytest.raises(DataError) as err:
        data.load_scenario(folder, max_len=15, use_images=False)
    assert "traindata_new.txt:2" in str(err.value) and found in str(err.value)


def test_bad_embeddings_and_missing_files(tmp_path):
    folder = write_scenario(tmp_path / "s", [line(1, (0, 1), (3, 2))])
    with pytest.raises(DataError, match="(?s)tools.embed.*--no-image"):
        data.load_scenario(folder, max_len=15, use_images=True)
    for array, found in ((np.zeros((6, 4), np.float32), "expected shape \\(7, e\\).*found shape \\(6, 4\\)"),
                         (np.zeros((7, 4), np.int64), "dtype int64"),
                         (np.full((7, 4), np.nan, np.float32), "row 0 .* non-finite")):
        np.save(folder / "image_embeddings.npy", array)
        with pytest.raises(DataError, match=found):
            data.load_scenario(folder, max_len=15, use_images=True)
    (folder / "Blist.txt").write_text("")
    with pytest.raises(DataError, match="Blist.txt: the file is empty"):
        data.read_items(folder)


def test_item_lists_number_their_items_0_1_2_in_line_order(tmp_path):
    """C2DSR numbers the items of Alist/Blist by their line; a list in another order, with a gap or a repeated
    index is refused at the first line out of order."""
    folder = write_scenario(tmp_path / "s", [line(1, (0, 1), (3, 2))])
    for text in ("100\tA0\t0\n102\tA2\t2\n101\tA1\t1\n", "100\tA0\t0\n101\tA1\t0\n102\tA2\t1\n"):
        (folder / "Alist.txt").write_text(text)
        with pytest.raises(DataError, match=r"Alist.txt:2: expected .* the local index 1 .*, found '10"):
            data.read_items(folder)


def test_demo_is_deterministic(tmp_path):
    a, b = make_demo(tmp_path / "a", seed=5, **TINY), make_demo(tmp_path / "b", seed=5, **TINY)
    for f in ("Alist.txt", "traindata_new.txt", "testdata_new.txt", "image_embeddings.npy"):
        assert (a / f).read_bytes() == (b / f).read_bytes()
    assert (a / "traindata_new.txt").read_bytes() != (make_demo(tmp_path / "c", seed=6, **TINY)
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


def test_a_named_scenario_without_its_files_says_what_to_fetch_and_where_it_goes(tmp_path, monkeypatch):
    folder = write_scenario(tmp_path / "Movie-Book", [line(1, (0, 1), (3, 2))])
    (folder / "traindata_new.txt").unlink()
    monkeypatch.setitem(data.SCENARIOS, "movie_book", folder)
    with pytest.raises(DataError) as err:
        data.resolve_scenario("movie_book", None)
    message = str(err.value)
    assert f"{folder}: scenario movie_book is missing traindata_new.txt." in message
    assert "https://github.com/cjx96/C2DSR" in message and "the folder Movie-Book of C2DSR's scenarios" in message
    assert "meta_Movies_and_TV.json.gz and meta_Books.json.gz, published at http://jmcauley.ucsd.edu" in message
    assert f"python -m tools.amazon images --scenario-dir {folder}" in message
    write_scenario(folder, [line(1, (0, 1), (3, 2))])  # the five files, but no image embeddings
    assert data.resolve_scenario("movie_book", None) == ("movie_book", folder)
    with pytest.raises(DataError, match=r"(?s)npy array \(No such file or directory\).*tools.embed.*meta_Movies"):
        data.load_scenario(folder, max_len=15, use_images=True, name="movie_book")
