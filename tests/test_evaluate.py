import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import captions
import evaluate
import main
import sample
from captions import COLOURS, KINDS, PATTERNS
from config import Config
from conftest import ROOT, tiny_args, write_dfmm
from datasets import identity_split
from get_embeddings import encode_texts
from model import Stage1_G, Stage2_G


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


# ------------------------------------------------------------ attribute targets

class _AttrData:
    def __init__(self, kinds, colours, patterns):
        self.kinds, self.colours, self.patterns = kinds, colours, patterns


def test_targets_come_from_the_dataset_attributes_in_the_config_vocabulary():
    assert evaluate.COLOUR_NAMES == tuple(COLOURS) and evaluate.PATTERN_NAMES == tuple(PATTERNS)
    assert not hasattr(evaluate, "parse_colour")  # captions are not parsed any more
    data = _AttrData(["dress", "pants", "shoes", "t-shirt"], ["red", "grey", "beige", "mauve"],
                     ["floral", None, "color block", "paisley"])
    kinds, colours, patterns = evaluate.attribute_targets(data)
    assert list(kinds) == [KINDS.index(k) for k in data.kinds]
    assert list(colours) == [list(COLOURS).index("red"), list(COLOURS).index("grey"),
                             list(COLOURS).index("beige"), evaluate.IGNORE]  # unknown: ignored
    assert list(patterns) == [PATTERNS.index("floral"), evaluate.IGNORE,
                              PATTERNS.index("color block"), evaluate.IGNORE]


# ------------------------------------------------------------------ R-precision

def _attributes(n, seed):
    rng = np.random.default_rng(seed)
    kinds = rng.integers(0, len(KINDS), n)
    colours = rng.integers(0, len(evaluate.COLOUR_NAMES), n)
    colours[rng.random(n) < 0.2] = -1  # some captions name no colour
    return kinds, colours


def _one_hot_logp(target, classes):
    p = np.full((len(target), classes), 1e-9)
    p[np.arange(len(target)), np.maximum(target, 0)] = 1.0
    return np.log(p / p.sum(1, keepdims=True))


def test_r_precision_perfect_and_uniform_classifiers():
    kinds, colours = _attributes(60, 0)
    pool_k, pool_c = _attributes(40, 1)
    nc = len(evaluate.COLOUR_NAMES)
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


def _patterns(n, seed):
    rng = np.random.default_rng(seed)
    p = rng.integers(0, len(PATTERNS), n)
    p[rng.random(n) < 0.3] = -1  # some samples have no pattern
    return p


def test_r_precision_with_patterns_needs_the_pattern_right_too():
    kinds, colours = _attributes(80, 0)
    pool_k, pool_c = _attributes(60, 1)
    pats, pool_p = _patterns(80, 2), _patterns(60, 3)
    nc, npat = len(evaluate.COLOUR_NAMES), len(PATTERNS)
    kl, cl, pl = _one_hot_logp(kinds, 5), _one_hot_logp(colours, nc), _one_hot_logp(pats, npat)
    kw = dict(k=10, seed=0, own_pattern=pats, pool_pattern=pool_p)
    perfect = evaluate.r_precision(kl, cl, kinds, colours, pool_k, pool_c, pattern_logp=pl, **kw)
    assert perfect == (1.0, 10.0)
    # knowing kind and colour but not the pattern: distractors that differ only in
    # pattern tie with the own caption, which counts as a miss
    blind = evaluate.r_precision(kl, cl, kinds, colours, pool_k, pool_c,
                                 pattern_logp=np.log(np.full((80, npat), 1 / npat)), **kw)
    without = evaluate.r_precision(kl, cl, kinds, colours, pool_k, pool_c, k=10, seed=0)
    assert without[0] == 1.0 and blind[0] < 1.0
    with pytest.raises(ValueError):
        evaluate.r_precision(kl, cl, kinds, colours, pool_k, pool_c, pattern_logp=pl)


def test_r_precision_pattern_distractors_follow_the_own_attributes():
    kinds, colours, pats = np.array([0, 0]), np.array([3, 3]), np.array([1, -1])
    pool_k = np.array([0, 0, 0, 1, 0])
    pool_c = np.array([3, 3, 3, 3, 4])
    pool_p = np.array([1, 2, -1, 1, -1])
    # image 0 (pattern 1): distractors have a pattern and differ in kind, colour or
    # pattern -> pool rows 1, 3; image 1 (no pattern): judged on kind and colour only,
    # distractors differ in one of them -> pool rows 3, 4
    hit, cands = evaluate.r_precision(
        _one_hot_logp(kinds, 5), _one_hot_logp(colours, 13), kinds, colours, pool_k, pool_c,
        k=10, pattern_logp=_one_hot_logp(pats, len(PATTERNS)), own_pattern=pats,
        pool_pattern=pool_p)
    assert hit == 1.0 and cands == 3


def test_images_of_any_size_are_resized_to_the_feature_net_size():
    net = evaluate.GarmentFeatureNet(width=4)
    for size in (16, 64, 256):
        x = torch.rand(3, 3, size, size) * 2 - 1
        assert evaluate.to_feat_size(x).shape == (3, 3, 64, 64)
        feats, kind_logp, colour_logp, pattern_logp = evaluate.featurize(net, x, "cpu",
                                                                         progress=False)
        assert feats.shape == (3, 32) and kind_logp.shape == (3, len(KINDS))
        assert colour_logp.shape == (3, len(COLOURS)) and pattern_logp.shape == (3, len(PATTERNS))
        assert torch.allclose(colour_logp.exp().sum(1), torch.ones(3), atol=1e-5)
        assert torch.allclose(pattern_logp.exp().sum(1), torch.ones(3), atol=1e-5)
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


def test_fd_halves_are_disjoint_equal_per_kind_and_from_the_heldout_set_only():
    kinds = [KINDS[i % 5] for i in range(200)]
    # held out: 7 t-shirts, 6 dresses, 1 pair of pants (too few), no leggings, 5 shoes
    want = {"t-shirt": 7, "dress": 6, "pants": 1, "leggings": 0, "shoes": 5}
    held = np.sort(np.concatenate([np.flatnonzero(np.array(kinds) == kd)[:n]
                                   for kd, n in want.items()]))
    a, b = evaluate.fd_halves(held, kinds)
    assert not set(a) & set(b) and set(a) | set(b) <= set(held)
    for kd, n in want.items():
        na = sum(kinds[i] == kd for i in a)
        nb = sum(kinds[i] == kd for i in b)
        assert na == nb == (n // 2 if n >= 2 else 0), kd
    # fixed: the same halves on every call, and by kind index as by kind name
    a2, b2 = evaluate.fd_halves(held, np.array([KINDS.index(k) for k in kinds]))
    assert list(a2) == list(a) and list(b2) == list(b)
    # never the training images, whatever the split
    tr, he, _ = evaluate.split_heldout(_FakeData(kinds), ["train"] * 200)
    a, b = evaluate.fd_halves(he, kinds)
    assert len(a) == len(b) > 0 and not (set(a) | set(b)) & set(tr)
    assert evaluate.fd_halves(np.zeros(0, int), kinds)[0].shape == (0,)


class _PixelData:
    """Dresses: striped (red/white horizontal stripes), pure color red, or no pattern
    (blue), at 64 px."""

    def __init__(self, n=48):
        self.kinds = ["dress" if i % 2 else "t-shirt" for i in range(n)]
        self.patterns = [("striped", "pure color", None)[i % 3] for i in range(n)]
        self.colours = ["blue" if p is None else "red" for p in self.patterns]
        x = torch.full((n, 3, 64, 64), 0.9)
        for i, p in enumerate(self.patterns):
            top = 8 if self.kinds[i] == "t-shirt" else 4
            bottom = 36 if self.kinds[i] == "t-shirt" else 60
            x[i, :, top:bottom, 16:48] = torch.tensor([0.6, -0.8, -0.8])[:, None, None] \
                if p else torch.tensor([-0.7, -0.5, 0.6])[:, None, None]
            if p == "striped":
                for r in range(top, bottom, 8):
                    x[i, :, r:r + 4, 16:48] = 1.0
        self.x = x

    def pixels(self, idx, device=None):
        return self.x[torch.as_tensor(np.asarray(idx))]


def test_feature_net_learns_patterns_from_data_patterns_and_reports_their_accuracy(tmp_path):
    data = _PixelData()
    train, held = np.arange(0, 36), np.arange(36, 48)
    cfg = Config(cache_dir=str(tmp_path / "cache"))
    net, info = evaluate.load_or_train_feature_net(cfg, data, train, held, "k", torch.device("cpu"),
                                                   epochs=25, width=4, progress=False)
    assert info["trained"] and Path(info["path"]).is_file()
    _, kl, cl, pl = evaluate.featurize(net, data.pixels(held), "cpu", progress=False)
    want = [PATTERNS.index(data.patterns[i]) if data.patterns[i] else -1 for i in held]
    ok = [(int(pl[j].argmax()) == t) for j, t in enumerate(want) if t >= 0]
    assert info["n_heldout_pattern"] == len(ok) == 8  # the 4 without a pattern are ignored
    assert info["pattern_acc"] == pytest.approx(sum(ok) / len(ok))
    assert min(info["pattern_acc"], info["kind_acc"], info["colour_acc"]) >= 0.875
    # the pattern targets are part of the cache key: another pattern, another net
    key = evaluate.featnet_key(data, train, "k", 4, 25)
    assert Path(info["path"]).name == f"featnet_{key}.pt"
    data.patterns[0] = "dotted"
    assert evaluate.featnet_key(data, train, "k", 4, 25) != key
    data.patterns[0] = "striped"
    again, info2 = evaluate.load_or_train_feature_net(cfg, data, train, held, "k",
                                                      torch.device("cpu"), epochs=25, width=4,
                                                      progress=False)
    assert not info2["trained"] and info2["pattern_acc"] == info["pattern_acc"]


# ------------------------------------------------------------------ end to end

def heldout_ids(per_category: int = 2, categories: int = 12) -> list[int]:
    """Item ids for conftest.write_dfmm such that the first photo of every category
    shows a garment identity_split holds out and the others garments it trains on."""
    def ids(split):
        return (i for i in range(1, 10 ** 6)
                if identity_split(f"MEN-Pants-id_{i:08d}-01_1_front.jpg") == split)
    held, train = ids("validation"), ids("train")
    return [next(held) if k == 0 else next(train) for _ in range(categories)
            for k in range(per_category)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(a tiny DFMM folder whose held-out garments cover every kind, its output folder
    with a tiny Stage-I generator trained on it)."""
    tmp = tmp_path_factory.mktemp("eval")
    root, out = tmp / "dfmm", tmp / "out"
    write_dfmm(root, ids=heldout_ids())
    assert main.main(["--train", "y", "--stage", "1"] + tiny_args(root, out)) == 0
    return root, out


def test_evaluate_end_to_end_on_a_tiny_dfmm_folder(trained, tmp_path, capsys, monkeypatch):
    root, out = trained
    calls = []  # (text embeddings, seed) of every generation call, run for real
    real_sample = sample.sample_images

    def recording_sample(netG, emb, n, seed, **kw):
        calls.append((emb.detach().cpu().clone(), seed))
        return real_sample(netG, emb, n, seed, **kw)

    monkeypatch.setattr(sample, "sample_images", recording_sample)
    ckpt = out / "stage1" / "last.pt"
    cfg = Config(data_dir=str(root), out_dir=str(tmp_path / "ev"), wandb_mode="disabled",
                 device="cpu")
    kw = dict(n_per_kind=3, k=4, feat_epochs=1, feat_width=4, progress=False)
    m = evaluate.evaluate(ckpt, cfg, **kw)
    printed = capsys.readouterr().out
    assert "held out by the data: 18 images of split validation, which training never" in printed
    assert "no validation split" not in printed and "held-out kind accuracy" in printed
    assert "garment feature net at 64 px" in printed and "judged at 64 px" in printed
    assert "pattern accuracy" in printed and "short prompts" in printed
    assert "Russian prompts" in printed and "Russian / English short prompts" in printed
    assert "FD-garment" in printed and "R-prec@4" in printed and "copies" in printed
    assert "drafts" not in printed  # a Stage-I generator has none

    df = pd.read_csv(tmp_path / "ev" / "eval" / "results.csv", keep_default_na=False)
    assert list(df.columns) == ["metric", "set", "kind", "value", "n"]
    rows = set(zip(df.metric, df.set, df.kind))
    sets = ("real_heldout", "generated", "generated_short", "generated_russian")
    expected = {(f"{a}_accuracy", s, kd) for a in ("kind", "colour", "pattern") for s in sets
                for kd in ("all",) + KINDS}
    expected |= {("fd_garment", "generated", "all"), ("fd_garment", "real_heldout_half", "all"),
                 ("r_precision", "real_heldout", "all"), ("r_precision", "generated", "all"),
                 ("variety", "real_heldout", "all"), ("variety", "generated", "all"),
                 ("copies", "real_heldout", "all"), ("copies", "generated", "all"),
                 ("feat_size", "featnet", "all")}
    assert rows == expected and len(df) == len(expected)
    assert "variety:" in printed
    assert 0 < m["variety_generated"] < 1 and 0 < m["variety_real"] < 1
    val = df.set_index(["metric", "set", "kind"])["value"].astype(float)
    n = df.set_index(["metric", "set", "kind"])["n"]
    assert val[("feat_size", "featnet", "all")] == 64 == m["feat_size"]
    for key in val.index:
        if key[0] not in ("fd_garment", "feat_size"):  # shares, or nan with n = 0
            assert (0 <= val[key] <= 1) if n[key] > 0 else np.isnan(val[key]), key
    assert (val["fd_garment"] >= 0).all()
    assert val[("kind_accuracy", "generated", "all")] == pytest.approx(m["kind_acc_generated"])
    for a in ("kind", "colour", "pattern"):
        for s, short in zip(sets, ("real", "generated", "short", "russian")):
            got, want = val[(f"{a}_accuracy", s, "all")], m[f"{a}_acc_{short}"]
            assert got == pytest.approx(want) or (np.isnan(got) and np.isnan(want)), (a, s)
            for kd in KINDS:
                v = m["per_kind"][kd][f"{a}_{short}"]
                assert val[(f"{a}_accuracy", s, kd)] == pytest.approx(v, nan_ok=True)
    # generated and short-prompt sets: n_per_kind per kind, every sample has a short caption
    assert m["n_generated"] == m["n_generated_short"] == 3 * len(KINDS)
    for kd in KINDS:
        assert n[("kind_accuracy", "generated", kd)] == 3
        assert n[("kind_accuracy", "generated_short", kd)] == 3
        assert n[("kind_accuracy", "generated_russian", kd)] == 3
    assert (tmp_path / "ev" / "eval" / "generated.png").is_file()
    # pattern_confusion.csv: every (asked, named) pair per set; its diagonal is the
    # pattern accuracy, its rows the images that ask for a pattern
    conf = pd.read_csv(tmp_path / "ev" / "eval" / "pattern_confusion.csv",
                       keep_default_na=False)
    assert list(conf.columns) == ["set", "asked", "named", "n"]
    assert len(conf) == 3 * len(captions.PATTERNS) ** 2
    for s in ("real_heldout", "generated", "generated_short"):
        c = conf[conf.set == s]
        assert c.n.sum() == n[("pattern_accuracy", s, "all")] > 0
        hits = c[c.asked == c.named].n.sum()
        assert hits / c.n.sum() == pytest.approx(val[("pattern_accuracy", s, "all")])
        assert np.asarray(m["pattern_confusion"][s]).sum() == c.n.sum()
    assert "pattern by pattern asked (generated" in printed

    # the targets are the dataset's attributes: pattern accuracy counts the held-out
    # samples that have a pattern (the fixture's shoes have none)
    data, splits, _ = evaluate._load_eval_data(cfg, progress=False)
    tr, held, _ = evaluate.split_heldout(data, splits)
    assert n[("pattern_accuracy", "real_heldout", "all")] == \
        sum(data.patterns[i] is not None for i in held) > 0
    assert n[("pattern_accuracy", "real_heldout", "shoes")] == 0
    assert n[("colour_accuracy", "real_heldout", "all")] == len(held) == m["n_heldout"]
    # FD-garment: both values from the same two disjoint held-out halves
    a_half, b_half = evaluate.fd_halves(held, data.kinds)
    assert m["n_fd"] == len(a_half) == len(b_half) > 0
    assert n[("fd_garment", "generated", "all")] == n[("fd_garment", "real_heldout_half", "all")] \
        == m["n_fd"]
    assert m["fd_kinds"] == sorted({data.kinds[i] for i in a_half}, key=KINDS.index)

    # generation: per kind the long captions, then the short ones and their Russian twins
    # (read into English) with the same noise seed; then one image per sample of half A
    # from its long caption
    short_rows = data.text_emb[data.text_start + 1]
    assert m["russian_read_back"] == 1.0  # every twin read back to its kind, colour, pattern
    for j in range(len(KINDS)):
        (long_emb, s1), (short_emb, s2), (ru_emb, s3) = calls[3 * j:3 * j + 3]
        assert s1 == s2 == s3 and len(long_emb) == len(short_emb) == len(ru_emb) == 3
        for r, (e_long, e_short, e_ru) in enumerate(zip(long_emb, short_emb, ru_emb)):
            i = int(torch.nonzero((data.emb == e_long).all(1))[0])
            assert torch.equal(e_short, short_rows[i]) and not torch.equal(e_short, e_long)
            # the Russian twin of the sample's short prompt, read into English and encoded
            twin = captions.russian_prompt(data.kinds[i], data.colours[i], None, 3 * j + r)
            assert not any("a" <= c <= "z" for c in twin.lower())  # Russian words only
            want = encode_texts([captions.read_prompt(twin).text])[0]
            assert torch.allclose(e_ru, torch.from_numpy(want), atol=1e-5)
    fd_calls = calls[3 * len(KINDS):3 * len(KINDS) + len(m["fd_kinds"])]
    assert torch.equal(torch.cat([e for e, _ in fd_calls]), data.emb[torch.as_tensor(a_half)])
    # variety: then, per kind, up to VARIETY_PROMPTS held-out long captions of that kind
    var_calls = calls[3 * len(KINDS) + len(m["fd_kinds"]):]
    assert len(var_calls) == len(KINDS)
    for kd, (emb, _) in zip(KINDS, var_calls):
        of_kind = [int(i) for i in held if data.kinds[i] == kd][:evaluate.VARIETY_PROMPTS]
        assert torch.equal(emb, data.emb[torch.as_tensor(of_kind)])

    cache = Path(m["featnet"]["path"])
    assert cache.parent == root / "cache" and cache.name.startswith("featnet_")
    assert m["featnet"]["trained"] and cache.is_file()
    mtime = cache.stat().st_mtime_ns
    m2 = evaluate.evaluate(ckpt, cfg, **kw)
    assert not m2["featnet"]["trained"] and cache.stat().st_mtime_ns == mtime
    for key in ("kind_acc_generated", "colour_acc_generated", "pattern_acc_generated",
                "kind_acc_short", "colour_acc_short", "pattern_acc_short", "fd_garment",
                "fd_garment_floor", "r_precision_generated", "kind_acc_real", "pattern_acc_real"):
        assert m2[key] == m[key] or (np.isnan(m2[key]) and np.isnan(m[key])), key


def test_confusion_counts_asked_against_named_and_skips_samples_without_one():
    logp = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1],
                                   [0.2, 0.2, 0.6], [0.1, 0.1, 0.8]]))
    target = [0, 1, 1, evaluate.IGNORE, 2]
    c = evaluate.confusion(logp, target, 3)
    assert c.tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    acc, n = evaluate._accuracy(logp, target)
    assert np.trace(c) / c.sum() == pytest.approx(acc) and c.sum() == n == 4
    assert evaluate.confusion(logp[:0], [], 3).sum() == 0


def test_missing_checkpoint_exits_2_with_a_clear_message(tmp_path):
    missing = tmp_path / "nope.pt"
    res = subprocess.run([sys.executable, "evaluate.py", "--net_g", str(missing), "--wandb",
                          "disabled", "--out_dir", str(tmp_path / "o")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "error:" in res.stderr and "does not exist" in res.stderr and str(missing) in res.stderr
    assert "Traceback" not in res.stderr


def test_mean_pairwise_rms_measures_within_group_spread():
    """Identical images: 0; black against white: 1 (the [0, 1] scale); a lone image is
    skipped; the mean runs over every pair of every group."""
    black, white = -torch.ones(3, 4, 4), torch.ones(3, 4, 4)
    assert evaluate.mean_pairwise_rms([torch.stack([black, black, black])]) == 0
    assert evaluate.mean_pairwise_rms([torch.stack([black, white])]) == pytest.approx(1)
    grey = torch.zeros(3, 4, 4)  # 0.5 from either
    groups = [torch.stack([black, white, grey]), torch.stack([white]), torch.stack([grey, grey])]
    assert evaluate.mean_pairwise_rms(groups) == pytest.approx((1 + 0.5 + 0.5 + 0) / 4)
    assert np.isnan(evaluate.mean_pairwise_rms([torch.stack([white])]))


def test_stage2_is_judged_at_128px_beside_its_own_upscaled_drafts(trained, tmp_path, capsys,
                                                                  monkeypatch):
    root, out = trained
    assert main.main(["--train", "y", "--stage", "2", "--stage1_g", str(out / "stage1" / "last.pt")]
                     + tiny_args(root, tmp_path / "s2") + ["--stage2_size", "32"]) == 0
    monkeypatch.setattr(evaluate, "VARIETY_PROMPTS", 2)  # fewer images to draw: a faster test
    ckpt = tmp_path / "s2" / "stage2" / "last.pt"
    cfg = Config(data_dir=str(root), out_dir=str(tmp_path / "ev"), wandb_mode="disabled",
                 device="cpu")
    m = evaluate.evaluate(ckpt, cfg, n_per_kind=2, k=4, feat_epochs=1, feat_width=4,
                          progress=False)
    printed = capsys.readouterr().out
    assert "garment feature net at 128 px" in printed
    # the tiny Stage II draws 32 px from 16 px drafts: both are enlarged to 128 px
    assert ("judged at 128 px by the garment feature net trained on the real training photos at "
            "128 px: real photos from the 128 px cache, generated 32 px images bicubic-upscaled, "
            "Stage-I drafts (16 px) bicubic-upscaled to 32 px, then bicubic-upscaled like them"
            ) in printed
    assert "drafts upscaled" in printed and "Stage II against its own upscaled drafts" in printed

    df = pd.read_csv(tmp_path / "ev" / "eval" / "results.csv", keep_default_na=False)
    val = df.set_index(["metric", "set", "kind"])["value"].astype(float)
    n = df.set_index(["metric", "set", "kind"])["n"]
    for attr in ("kind", "colour", "pattern"):
        for s in ("real_heldout", "generated", "drafts_upscaled", "generated_short"):
            assert (f"{attr}_accuracy", s, "all") in val.index, (attr, s)
        for kd in KINDS:  # the drafts are scored per kind too, on the same samples
            assert n[(f"{attr}_accuracy", "drafts_upscaled", kd)] == \
                n[(f"{attr}_accuracy", "generated", kd)]
    for metric in ("fd_garment", "r_precision", "copies"):
        assert val[(metric, "drafts_upscaled", "all")] == pytest.approx(
            m[{"fd_garment": "fd_garment_drafts", "r_precision": "r_precision_drafts",
               "copies": "copies_drafts"}[metric]])
    assert n[("fd_garment", "drafts_upscaled", "all")] == n[("fd_garment", "generated", "all")] \
        == m["n_fd"] > 0
    assert val[("fd_garment", "drafts_upscaled", "all")] >= 0
    assert val[("fd_garment", "real_heldout_half", "all")] == pytest.approx(m["fd_garment_floor"])
    # how far Stage II moved its images from their drafts, over the images scored
    assert val[("draft_change", "generated", "all")] == pytest.approx(m["draft_change"])
    assert m["draft_change"] >= 0
    assert n[("draft_change", "generated", "all")] == m["n_generated"]
    assert "from their upscaled drafts (mean absolute pixel difference" in printed
    assert val[("feat_size", "featnet", "all")] == 128 == m["feat_size"]
    assert (tmp_path / "ev" / "eval" / "drafts_upscaled.png").is_file()
    conf = pd.read_csv(tmp_path / "ev" / "eval" / "pattern_confusion.csv", keep_default_na=False)
    assert set(conf.set) == {"real_heldout", "generated", "generated_short", "drafts_upscaled"}
    assert conf[conf.set == "drafts_upscaled"].n.sum() == \
        n[("pattern_accuracy", "drafts_upscaled", "all")]

    # the 128 px net is cached beside the 64 px one, its size in the key
    assert m["featnet"]["size"] == 128 and Path(m["featnet"]["path"]).is_file()
    data, splits, index_key = evaluate._load_eval_data(cfg, progress=False, size=128)
    assert data.size == 128
    tr, held, _ = evaluate.split_heldout(data, splits)
    key = evaluate.featnet_key(data, tr, index_key, 4, 1, 128)
    assert Path(m["featnet"]["path"]).name == f"featnet_{key}.pt"
    assert evaluate.featnet_key(data, tr, index_key, 4, 1, 64) != key

    # the drafts are those of the very images scored: the same noise and CA draws
    netG, _, _ = sample.load_generator(ckpt, "cpu")
    emb = data.emb[:3]
    img, draft = evaluate.generate(netG, emb, 1, 5, with_drafts=True)
    assert torch.equal(img, sample.sample_images(netG, emb, 1, 5))
    low = sample.sample_images(netG.stage1, emb, 1, 5)
    assert low.shape[-1] == 16 and draft.shape == img.shape
    assert torch.equal(draft, evaluate.upscale(low, img.shape[-1]))


def test_draft_change_is_zero_for_a_stage2_that_returns_its_drafts():
    """A new residual Stage II (its detail layer zero) returns its drafts: change 0, the
    signature of a Stage II that adds nothing; a redrawing one moves them far."""
    torch.manual_seed(0)
    cfg = Config(stage1_size=16, stage2_size=32, gf_dim=4, df_dim=4, r_num=1, stage=2,
                 s2_output="residual")
    g1 = Stage1_G(cfg).eval()
    emb = torch.nn.functional.normalize(torch.randn(6, cfg.text_dim), dim=1)
    g2 = Stage2_G(cfg, g1).eval()
    with torch.no_grad():
        g2.to_img.weight.zero_()  # no detail: as new, or as a detail path shut by training
    img, draft = evaluate.generate(g2, emb, 1, 3, with_drafts=True)
    change = evaluate.draft_change(img, draft)
    assert change.shape == (6,) and change.max() < 1e-3 < evaluate.DRAFT_CHANGE_MIN
    redraw = Stage2_G(dataclasses.replace(cfg, s2_output="redraw"), g1).eval()
    img, draft = evaluate.generate(redraw, emb, 1, 3, with_drafts=True)
    assert evaluate.draft_change(img, draft).min() > evaluate.DRAFT_CHANGE_MIN
    white, black = torch.ones(1, 3, 4, 4), -torch.ones(1, 3, 4, 4)
    assert evaluate.draft_change(white, black).item() == pytest.approx(1)


# ------------------------------------------------------------------ copy check

def test_copy_shares_count_images_nearer_to_training_photos_than_unseen_ones():
    rng = np.random.default_rng(0)
    train = torch.from_numpy(rng.normal(size=(200, 16)))
    # unseen photos: like training photos, but never one of them
    held = train[:100] + torch.from_numpy(rng.normal(size=(100, 16))) * 0.7
    shares, threshold = evaluate.copy_shares({"copies": train[50:150],
                                              "new": torch.from_numpy(rng.normal(size=(80, 16)))},
                                             train, held)
    assert shares["copies"] == (1.0, 100) and shares["new"][0] <= 0.05
    assert shares["real"] == (pytest.approx(0.05, abs=0.011), 100)  # by construction
    assert 0 < threshold < 1


class _GarmentData:
    """64 px photos of one garment block each, in one of four colours and two shapes,
    at its own place and size, with a little noise: no two are alike."""

    def __init__(self, n=96, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.kinds = ["dress" if i % 2 else "pants" for i in range(n)]
        self.colours = [("red", "blue", "green", "black")[i % 4] for i in range(n)]
        self.patterns = [None] * n
        rgb = {"red": (0.7, -0.8, -0.8), "blue": (-0.7, -0.5, 0.6), "green": (-0.7, 0.2, -0.6),
               "black": (-0.9, -0.9, -0.9)}
        x = torch.full((n, 3, 64, 64), 0.9) + 0.05 * torch.randn(n, 3, 64, 64, generator=g)
        for i in range(n):
            w, h = (int(v) for v in torch.randint(14, 26, (2,), generator=g))
            h = h + (20 if self.kinds[i] == "dress" else 0)
            top, left = (int(v) for v in torch.randint(2, 64 - 46, (2,), generator=g))
            x[i, :, top:top + h, left:left + w] = torch.tensor(rgb[self.colours[i]])[:, None, None]
        self.x = x.clamp(-1, 1)

    def pixels(self, idx, device=None):
        return self.x[torch.as_tensor(np.asarray(idx))]


def test_copy_check_is_1_for_training_photos_and_low_for_noise(tmp_path):
    data = _GarmentData()
    train, held = np.arange(0, 72), np.arange(72, 96)
    cfg = Config(cache_dir=str(tmp_path / "cache"))
    net, _ = evaluate.load_or_train_feature_net(cfg, data, train, held, "k", torch.device("cpu"),
                                                epochs=4, width=4, progress=False)
    feat = {}
    for name, images in (("held", data.pixels(held)), ("photos", data.pixels(train[:40])),
                         ("noise", torch.rand(40, 3, 64, 64) * 2 - 1)):
        feat[name], *_ = evaluate.featurize(net, images, "cpu", progress=False)
    copies, threshold = evaluate.copy_check(net, data, train, feat.pop("held"), feat, "cpu",
                                            progress=False)
    assert copies["photos"] == (1.0, 40)  # "generated" images that are training photos
    assert copies["noise"][0] <= 0.1 and copies["real"][1] == len(held)
    assert copies["real"][0] <= 0.1 and threshold < 1
