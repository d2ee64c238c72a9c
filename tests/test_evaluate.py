import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import evaluate
import main
from config import KINDS, Config
from conftest import ROOT, tiny_args


# ------------------------------------------------------------------ Frechet distance

def _exact(n, d, seed):
    """(n, d) samples whose sample mean is 0 and sample covariance exactly I."""
    x = np.random.default_rng(seed).normal(size=(n, d))
    x -= x.mean(0)
    q, _ = np.linalg.qr(x)  # orthonormal, zero-mean columns
    return q * np.sqrt(n - 1)


def test_frechet_of_identical_sets_is_zero():
    a = np.random.default_rng(0).normal(size=(300, 16)) * np.linspace(0.1, 3, 16) + 5
    scale = np.trace(np.cov(a, rowvar=False)) + (a.mean(0) ** 2).sum()
    assert evaluate.frechet_distance(a, a) / scale < 1e-6
    assert evaluate.frechet_distance(torch.from_numpy(a).float(), torch.from_numpy(a).float()) \
        / scale < 1e-6


def test_frechet_grows_with_the_shift():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    d = [evaluate.frechet_distance(a, b + s) for s in (0.25, 1.0, 3.0)]
    assert d[0] < d[1] < d[2]
    # a pure shift adds exactly |shift|^2 to the mean term
    assert evaluate.frechet_distance(a, a + 3.0) == pytest.approx(8 * 9.0, rel=1e-6)


@pytest.mark.parametrize("m1,s1,m2,s2", [(0.0, 1.0, 0.0, 2.0), (1.5, 0.5, -1.0, 3.0), (2.0, 1.0, 2.0, 1.0)])
def test_frechet_of_1d_gaussians(m1, s1, m2, s2):
    x, y = _exact(50, 1, 0), _exact(70, 1, 1)
    got = evaluate.frechet_distance(m1 + s1 * x, m2 + s2 * y)
    assert got == pytest.approx((m1 - m2) ** 2 + (s1 - s2) ** 2, abs=1e-9)


def test_frechet_of_diagonal_covariances():
    m1, m2 = np.array([0.0, 1.0, -2.0, 0.5]), np.array([1.0, 1.0, 0.0, -0.5])
    s1, s2 = np.array([1.0, 2.0, 0.5, 3.0]), np.array([2.0, 2.0, 1.5, 0.1])
    a, b = m1 + _exact(60, 4, 2) * s1, m2 + _exact(90, 4, 3) * s2
    want = ((m1 - m2) ** 2).sum() + ((s1 - s2) ** 2).sum()
    assert evaluate.frechet_distance(a, b) == pytest.approx(want, rel=1e-9)
    assert evaluate.frechet_distance(b, a) == pytest.approx(want, rel=1e-9)


def test_frechet_handles_rank_deficient_sets():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(5, 32)), rng.normal(size=(7, 32))  # fewer samples than dims
    d = evaluate.frechet_distance(a, b)
    assert np.isfinite(d) and d >= 0


# ----------------------------------------------------------------- colour parsing

@pytest.mark.parametrize("caption,colour", [
    ("The lady wears a short-sleeve T-shirt with pure color patterns. The T-shirt is red.", "red"),
    ("The gentleman wears long pants. The pants are navy with pure color patterns and denim "
     "fabric.", "navy"),
    ("The lady wears a long dress in green with floral patterns. She wears a pair of black "
     "shoes.", "green"),
    ("The gentleman wears a long-sleeve T-shirt with blue and white striped patterns.", "blue"),
    ("A gray dress.", "grey"),
    ("A Beige pair of pants.", "beige"),
    ("A pair of white shoes. The lady wears a pair of black sneakers.", "white"),
    ("This lady is wearing a long-sleeve shirt with solid color patterns. It is cotton.", None),
    ("A reddish, colourful outfit with a blueprint.", None),
])
def test_parse_colour(caption, colour):
    assert evaluate.parse_colour(caption) == colour
    idx = evaluate.colour_index(caption)
    assert (evaluate.COLOURS[idx] if idx >= 0 else None) == colour


# ------------------------------------------------------------------ R-precision

def _attributes(n, seed):
    rng = np.random.default_rng(seed)
    kinds = rng.integers(0, len(KINDS), n)
    colours = rng.integers(0, len(evaluate.COLOURS), n)
    colours[rng.random(n) < 0.2] = -1  # some captions name no colour
    return kinds, colours


def _one_hot_logp(target, classes):
    p = np.full((len(target), classes), 1e-9)
    p[np.arange(len(target)), np.maximum(target, 0)] = 1.0
    return np.log(p / p.sum(1, keepdims=True))


def test_r_precision_perfect_and_uniform_classifiers():
    kinds, colours = _attributes(60, 0)
    pool_k, pool_c = _attributes(40, 1)
    nc = len(evaluate.COLOURS)
    perfect = evaluate.r_precision(_one_hot_logp(kinds, 5), _one_hot_logp(colours, nc),
                                   kinds, colours, pool_k, pool_c, k=10, seed=0)
    assert perfect[0] == 1.0 and perfect[1] == 10
    uniform = evaluate.r_precision(np.log(np.full((60, 5), 0.2)), np.log(np.full((60, nc), 1 / nc)),
                                   kinds, colours, pool_k, pool_c, k=10, seed=0)
    assert uniform[0] <= 1 / 10  # every candidate ties: ties count as misses
    # a classifier that knows the kind but not the colour sits in between
    mid = evaluate.r_precision(_one_hot_logp(kinds, 5), np.log(np.full((60, nc), 1 / nc)),
                               kinds, colours, pool_k, pool_c, k=10, seed=0)
    assert uniform[0] <= mid[0] < perfect[0]


def test_r_precision_uses_what_the_pool_allows():
    kinds, colours = np.array([0, 1]), np.array([3, -1])
    pool_k, pool_c = np.array([0, 0, 2, 1]), np.array([3, 4, 5, 3])
    # image 0 (kind 0, colour 3): distractors differ in kind or colour -> pool rows 1, 2, 3
    # image 1 (kind 1, no colour): distractors differ in kind -> pool rows 0, 1, 2
    hit, cands = evaluate.r_precision(_one_hot_logp(kinds, 5), _one_hot_logp(colours, 13),
                                      kinds, colours, pool_k, pool_c, k=10)
    assert hit == 1.0 and cands == 4


def test_images_of_any_size_are_resized_to_the_feature_net_size():
    net = evaluate.GarmentFeatureNet(width=4)
    for size in (16, 64, 256):
        x = torch.rand(3, 3, size, size) * 2 - 1
        assert evaluate.to_feat_size(x).shape == (3, 3, 64, 64)
        feats, kind_logp, colour_logp = evaluate.featurize(net, x, "cpu", progress=False)
        assert feats.shape == (3, 32) and kind_logp.shape == (3, len(KINDS))
        assert torch.allclose(colour_logp.exp().sum(1), torch.ones(3), atol=1e-5)
    flat = torch.full((2, 3, 256, 256), 0.5)
    assert torch.allclose(evaluate.to_feat_size(flat), torch.full((2, 3, 64, 64), 0.5))


# ------------------------------------------------------------------ held-out split

class _FakeData:
    def __init__(self, kinds):
        self.kinds = kinds


def test_heldout_split_uses_validation_rows_else_ten_percent_per_kind():
    kinds = [KINDS[i % 5] for i in range(100)]
    splits = ["validation" if i % 7 == 0 else "train" for i in range(100)]
    tr, he, made = evaluate.split_heldout(_FakeData(kinds), splits)
    assert not made and list(he) == [i for i in range(100) if i % 7 == 0]
    assert len(tr) + len(he) == 100
    tr, he, made = evaluate.split_heldout(_FakeData(kinds), ["train"] * 100)
    assert made and len(he) == 10 and not set(tr) & set(he)
    assert sorted({kinds[i] for i in he}) == sorted(KINDS)  # two of each kind
    assert list(evaluate.split_heldout(_FakeData(kinds), ["train"] * 100)[1]) == list(he)


# ------------------------------------------------------------------ end to end

def test_evaluate_end_to_end_on_a_tiny_dfmm_folder(dfmm, tmp_path, capsys):
    root, _ = dfmm
    out = tmp_path / "out"
    assert main.main(["--train", "y", "--stage", "1"] + tiny_args(root, out)) == 0
    ckpt = out / "stage1" / "last.pt"
    cfg = Config(data_dir=str(root), out_dir=str(tmp_path / "ev"), wandb_mode="disabled",
                 device="cpu")
    kw = dict(n_per_kind=3, k=4, feat_epochs=1, feat_width=4, progress=False)
    m = evaluate.evaluate(ckpt, cfg, **kw)
    printed = capsys.readouterr().out
    assert "no validation split" in printed and "held-out kind accuracy" in printed
    assert "FD-garment" in printed and "R-prec@4" in printed

    df = pd.read_csv(tmp_path / "ev" / "eval" / "results.csv", keep_default_na=False)
    assert list(df.columns) == ["metric", "set", "kind", "value", "n"]
    rows = set(zip(df.metric, df.set, df.kind))
    expected = {("kind_accuracy", "real_heldout", "all"), ("kind_accuracy", "generated", "all"),
                ("colour_accuracy", "real_heldout", "all"), ("colour_accuracy", "generated", "all"),
                ("fd_garment", "generated", "all"), ("fd_garment", "real_train", "all"),
                ("r_precision", "real_heldout", "all"), ("r_precision", "generated", "all")}
    expected |= {("kind_accuracy", s, kd) for kd in KINDS for s in ("real_heldout", "generated")}
    assert rows == expected and len(df) == len(expected)
    val = df.set_index(["metric", "set", "kind"])["value"].astype(float)
    for metric in ("kind_accuracy", "colour_accuracy", "r_precision"):
        v = val[metric]
        assert ((v >= 0) & (v <= 1)).all(), metric
    assert (val["fd_garment"] >= 0).all()
    assert val[("kind_accuracy", "generated", "all")] == pytest.approx(m["kind_acc_generated"])
    assert df.set_index(["metric", "set", "kind"]).loc[("kind_accuracy", "generated", "dress"), "n"] == 3
    assert m["n_generated"] == 3 * len(KINDS) and m["n_floor"] == 3 * len(KINDS)
    assert (tmp_path / "ev" / "eval" / "generated.png").is_file()

    cache = Path(m["featnet"]["path"])
    assert cache.parent == root / "cache" and cache.name.startswith("featnet_")
    assert m["featnet"]["trained"] and cache.is_file()
    mtime = cache.stat().st_mtime_ns
    m2 = evaluate.evaluate(ckpt, cfg, **kw)
    assert not m2["featnet"]["trained"] and cache.stat().st_mtime_ns == mtime
    for key in ("kind_acc_generated", "colour_acc_generated", "fd_garment", "fd_garment_floor",
                "r_precision_generated", "kind_acc_real"):
        assert m2[key] == m[key] or (np.isnan(m2[key]) and np.isnan(m[key])), key


def test_missing_checkpoint_exits_2_with_a_clear_message(tmp_path):
    missing = tmp_path / "nope.pt"
    res = subprocess.run([sys.executable, "evaluate.py", "--net_g", str(missing), "--wandb",
                          "disabled", "--out_dir", str(tmp_path / "o")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "error:" in res.stderr and "does not exist" in res.stderr and str(missing) in res.stderr
    assert "Traceback" not in res.stderr
