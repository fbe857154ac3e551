"""The generated demo scenario (docs/data.md, "The demo scenario"): two domains in C2DSR's format, written
with data.py's writers, and image embeddings that carry what the item IDs of rarely seen items cannot."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from data import EMBEDDINGS_FILE, SPLIT_FILES, atomic_folder, write_item_list, write_sequences

DEMO_SEED = 0  # the seed of the demo that `python train.py` trains on: training seeds vary the model, never the data


@dataclass
class DemoSpec:
    """Sizes and strengths of the generated demo scenario (docs/data.md, "The demo scenario")."""

    num_x: int = 1000  # items in domain X (more than 999, for the sampled protocol)
    num_y: int = 1200  # items in domain Y
    num_users: int = 3000  # one sequence each; the latest third become valid/test
    categories: int = 16  # shared across both domains: a user's taste carries over
    style_dim: int = 8  # a visual style that users prefer, visible only in the image
    image_dim: int = 64  # e of the demo's image embeddings (the real CLIP has 512)
    stay: float = 0.6  # probability that the next item keeps the current category (sequential signal)
    style_weight: float = 3.0  # how strongly a user's style preference picks items
    no_image: float = 0.05  # share of items without an image (zero rows)
    min_len: int = 8
    max_len: int = 16


def make_demo(out: Path, *, seed: int, spec: DemoSpec = DemoSpec()) -> Path:
    """Write a deterministic two-domain scenario to `out` (once; later calls with the same spec reuse it)."""
    recipe = json.dumps({"seed": seed, **asdict(spec)}, sort_keys=True)
    if (out / "demo.json").is_file() and (out / "demo.json").read_text() == recipe:
        return out
    rng = np.random.default_rng(seed)
    N = spec.num_x + spec.num_y
    domain = np.r_[np.zeros(spec.num_x, int), np.ones(spec.num_y, int)]
    category = rng.integers(0, spec.categories, N)
    popularity = rng.lognormal(0.0, 1.2, N)  # long tail
    style = rng.normal(size=(N, spec.style_dim))
    style /= np.linalg.norm(style, axis=1, keepdims=True)
    # image = category prototype + a projection of the item's style + noise (unnormalised, like CLIP)
    prototypes = rng.normal(size=(spec.categories, spec.image_dim))
    style_proj = rng.normal(size=(spec.style_dim, spec.image_dim))
    E_img = prototypes[category] + 0.8 * style @ style_proj + 0.5 * rng.normal(size=(N, spec.image_dim))
    E_img[rng.random(N) < spec.no_image] = 0.0

    sequences, last_time = [], []
    for _ in range(spec.num_users):
        taste = rng.dirichlet(np.full(spec.categories, 0.3))  # few favourite categories, both domains
        liked_style = rng.normal(size=spec.style_dim)
        liked_style /= np.linalg.norm(liked_style)
        share_x = rng.uniform(0.25, 0.75)
        n = int(rng.integers(spec.min_len, spec.max_len + 1))
        domains = (rng.random(n) >= share_x).astype(int)
        domains[rng.permutation(n)[:6]] = [0, 0, 0, 1, 1, 1]  # at least 3 items of each domain
        current = rng.choice(spec.categories, p=taste)
        seq = []
        for d in domains:
            if rng.random() > spec.stay:
                current = rng.choice(spec.categories, p=taste)
                taste = 0.9 * taste + 0.1 * np.eye(spec.categories)[current]  # tastes drift
            pool = np.flatnonzero((domain == d) & (category == current))
            if len(pool) == 0:
                pool = np.flatnonzero(domain == d)
            w = popularity[pool] * np.exp(spec.style_weight * style[pool] @ liked_style)
            seq.append(int(rng.choice(pool, p=w / w.sum())))
        start = int(rng.integers(1_300_000_000, 1_500_000_000))
        times = start + np.cumsum(rng.integers(3600, 30 * 86400, n))
        sequences.append(list(zip(seq, times.tolist())))
        last_time.append(times[-1])

    order = np.argsort(last_time, kind="stable")
    n_train = len(order) - len(order) // 3
    held = order[n_train:]  # the latest sequences: alternately valid and test
    splits = {"train": order[:n_train], "valid": held[0::2], "test": held[1::2]}

    with atomic_folder(out, replace=True) as tmp:  # replaces an earlier, interrupted attempt
        for fname, lo, hi, tag in (("Alist.txt", 0, spec.num_x, "A"), ("Blist.txt", spec.num_x, N, "B")):
            write_item_list(tmp / fname, [f"DEMO{tag}{j:06d}" for j in range(hi - lo)], 10_000 + lo)
        for split, users in splits.items():
            write_sequences(tmp / SPLIT_FILES[split], ((u, u, sequences[u]) for u in users))
        np.save(tmp / EMBEDDINGS_FILE, E_img.astype(np.float32))
        (tmp / "demo.json").write_text(recipe)  # marks a complete scenario
    return out
