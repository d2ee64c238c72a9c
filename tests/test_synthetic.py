"""Tests for synthetic.py: the procedural garment dataset in the DFMM layout."""

import csv
import json
import pathlib
import re
import sys

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import synthetic  # noqa: E402
from captions import PATTERNS, find_colour  # noqa: E402
import datasets as ds  # noqa: E402

N = 4
W, H = 128, 188
NAME_RE = re.compile(r"^(MEN|WOMEN)-[A-Za-z_]+-id_\d{8}-\d{2}_\d_[a-z]+\.jpg$")


def _rows(root):
    with open(root / "labels.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _segm_path(root, name):
    return root / "segm" / (name[: -len(".jpg")] + "_segm.png")


def _tree_bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "set"
    out = synthetic.make_synthetic(root, n_per_kind=N, seed=0, width=W, height=H, progress=False)
    assert out == root
    return root


def test_layout_and_counts(data):
    for rel in ("images", "segm", "captions.json", "labels.csv", ".complete",
                "labels/shape/shape_anno_all.txt", "labels/texture/fabric_ann.txt",
                "labels/texture/pattern_ann.txt"):
        assert (data / rel).exists(), rel
    with open(data / "labels.csv", encoding="utf-8") as f:
        assert f.readline().strip() == "image,category,color,pattern,split"
    rows = _rows(data)
    counts = {k: sum(r["category"] == k for r in rows) for k in synthetic.KINDS}
    assert counts == {k: N for k in synthetic.KINDS}
    for r in rows:
        assert r["color"] in synthetic.COLOUR_RGB
        assert r["pattern"] in PATTERNS  # the vocabulary's name
        assert r["split"] in ("train", "validation")
    assert len(list((data / "images").iterdir())) == 5 * N
    assert len(list((data / "segm").iterdir())) == 5 * N
    # nothing left over from the temporary directory
    assert [p.name for p in data.parent.iterdir()] == ["set"]
    params = json.loads((data / ".complete").read_text())
    assert params["n_per_kind"] == N and params["seed"] == 0
    assert params["width"] == W and params["height"] == H


def test_images_names_and_captions(data):
    caps = json.loads((data / "captions.json").read_text(encoding="utf-8"))
    rows = {r["image"]: r for r in _rows(data)}
    assert set(caps) == set(rows)
    assert len(caps) == 5 * N
    for name, cap in caps.items():
        assert NAME_RE.match(name), name
        with Image.open(data / "images" / name) as im:
            assert im.format == "JPEG"
            assert im.mode == "RGB"
            assert im.size == (W, H)
        r = rows[name]
        assert find_colour(cap) is None, (name, cap)  # DFMM captions name no colour
        who, other = ("lady", "gentleman") if name.startswith("WOMEN-") else ("gentleman", "lady")
        assert other not in cap, (name, cap)
        if r["category"] != "shoes":  # shoe captions may leave out the wearer
            assert who in cap, (name, cap)
        word = {"t-shirt": "T-shirt", "dress": "dress", "pants": "pants",
                "leggings": "leggings", "shoes": ("sneakers", "boots")}[r["category"]]
        assert any(w in cap for w in ((word,) if isinstance(word, str) else word)), cap
        drawn = {v: k for k, v in synthetic.PATTERN_NAMES.items()}[r["pattern"]]
        if r["category"] != "shoes":  # shoe captions may leave out the pattern
            assert any(w in cap for w in synthetic.PATTERN_WORDS[drawn]), cap
    ids = [n.split("-id_")[1][:8] for n in caps]
    assert len(set(ids)) == len(ids)


def test_segmentation_masks(data):
    for r in _rows(data):
        path = _segm_path(data, r["image"])
        assert path.exists(), path
        with Image.open(path) as im:
            assert im.mode == "L"
            assert im.size == (W, H)
            seg = np.asarray(im)
        pid = synthetic.PARSING_LABELS[r["category"]]
        values = set(np.unique(seg).tolist())
        assert values == {0, pid}, (r["image"], values)
        frac = (seg == pid).mean()
        assert 0.05 < frac < 0.8, (r["image"], frac)


def test_label_files(data):
    names = sorted(r["image"] for r in _rows(data))
    for rel, n_vals in (("labels/shape/shape_anno_all.txt", 12),
                        ("labels/texture/fabric_ann.txt", 3),
                        ("labels/texture/pattern_ann.txt", 3)):
        lines = (data / rel).read_text().splitlines()
        assert len(lines) == len(names), rel
        assert sorted(line.split()[0] for line in lines) == names
        for line in lines:
            parts = line.split()
            assert len(parts) == 1 + n_vals, line
            assert all(0 <= int(x) <= 7 for x in parts[1:]), line
    rows = {r["image"]: r for r in _rows(data)}
    for line in (data / "labels/texture/pattern_ann.txt").read_text().splitlines():
        name, up, low, outer = line.split()
        r = rows[name]
        pid = PATTERNS.index(r["pattern"])  # the vocabulary's order is DFMM's pattern codes
        assert pid == synthetic.PATTERN_IDS[{v: k for k, v in synthetic.PATTERN_NAMES.items()}[r["pattern"]]]
        if r["category"] == "t-shirt":
            assert (int(up), int(low)) == (pid, 7)
        elif r["category"] in ("pants", "leggings"):
            assert (int(up), int(low)) == (7, pid)
    for line in (data / "labels/shape/shape_anno_all.txt").read_text().splitlines():
        name, *vals = line.split()
        vals = [int(v) for v in vals]
        if rows[name]["category"] == "t-shirt":
            assert vals[0] in (1, 3)
        if rows[name]["category"] in ("pants", "leggings"):
            assert vals[1] in (2, 3)


def test_same_seed_same_bytes_other_seed_differs(tmp_path, data):
    again = synthetic.make_synthetic(tmp_path / "again", n_per_kind=N, seed=0, width=W, height=H,
                                     progress=False)
    a, b = _tree_bytes(data), _tree_bytes(again)
    assert a.keys() == b.keys()
    assert a == b
    other = synthetic.make_synthetic(tmp_path / "other", n_per_kind=N, seed=1, width=W, height=H,
                                     progress=False)
    assert (other / "captions.json").read_bytes() != (data / "captions.json").read_bytes()
    imgs_a = {p.read_bytes() for p in (data / "images").iterdir()}
    imgs_c = {p.read_bytes() for p in (other / "images").iterdir()}
    assert not imgs_a & imgs_c


def test_workers_do_not_change_output(tmp_path):
    one = synthetic.make_synthetic(tmp_path / "one", n_per_kind=2, seed=3, width=W, height=H,
                                   progress=False, workers=1)
    two = synthetic.make_synthetic(tmp_path / "two", n_per_kind=2, seed=3, width=W, height=H,
                                   progress=False, workers=2)
    assert _tree_bytes(one) == _tree_bytes(two)


def test_ensure_synthetic(tmp_path):
    root = tmp_path / "ds"
    kw = dict(width=W, height=H, progress=False)
    synthetic.ensure_synthetic(root, n_per_kind=1, seed=0, **kw)
    marker = root / ".complete"
    caps = root / "captions.json"
    before = (marker.stat().st_mtime_ns, caps.stat().st_mtime_ns)
    assert synthetic.ensure_synthetic(root, n_per_kind=1, seed=0, **kw) == root
    assert (marker.stat().st_mtime_ns, caps.stat().st_mtime_ns) == before

    # an interrupted or foreign-looking copy (no .complete) is remade
    marker.unlink()
    (root / "captions.json").write_text("{}")
    synthetic.ensure_synthetic(root, n_per_kind=1, seed=0, **kw)
    assert marker.exists()
    assert len(json.loads(caps.read_text())) == 5

    # other parameters: remade with them
    synthetic.ensure_synthetic(root, n_per_kind=2, seed=0, **kw)
    assert json.loads(marker.read_text())["n_per_kind"] == 2
    assert len(_rows(root)) == 10


def test_refuses_to_replace_unrelated_directory(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        synthetic.make_synthetic(root, n_per_kind=1, seed=0, width=W, height=H, progress=False)
    assert (root / "notes.txt").read_text() == "keep me"


def _nearest(rgb):
    names = list(synthetic.COLOUR_RGB)
    table = np.array([synthetic.COLOUR_RGB[c] for c in names], dtype=float)
    return names[int(np.argmin(((table - np.asarray(rgb, dtype=float)) ** 2).sum(1)))]


def test_colour_words_match_pixels(tmp_path):
    # a larger set at full size so that every kind has solid-colour images
    root = synthetic.make_synthetic(tmp_path / "c", n_per_kind=10, seed=5, progress=False)
    checked = {}
    for r in _rows(root):
        if r["pattern"] != "pure color":
            continue
        img = np.asarray(Image.open(root / "images" / r["image"]), dtype=float)
        seg = np.asarray(Image.open(_segm_path(root, r["image"])))
        px = img[seg > 0]
        # shoes have white or dark soles: use the median, which the upper decides
        value = np.median(px, axis=0) if r["category"] == "shoes" else px.mean(axis=0)
        assert _nearest(value) == r["color"], (r["image"], r["color"], value)
        checked[r["category"]] = checked.get(r["category"], 0) + 1
    assert set(checked) == set(synthetic.KINDS), checked


def test_pattern_second_colour_is_drawn(tmp_path):
    root = synthetic.make_synthetic(tmp_path / "p", n_per_kind=10, seed=7, width=W, height=H,
                                    progress=False)
    plan = {s["name"]: s for s in synthetic._plan(10, 7)}  # the colours each image was drawn in
    seen = 0
    for r in _rows(root):
        if r["pattern"] == "pure color":
            continue
        c1, c2 = plan[r["image"]]["color"], plan[r["image"]]["color2"]
        assert c1 == r["color"] and c2 and c2 != c1
        img = np.asarray(Image.open(root / "images" / r["image"]), dtype=float)
        seg = np.asarray(Image.open(_segm_path(root, r["image"])))
        px = img[seg > 0].astype(np.uint8)
        # each pixel's colour name, as datasets.name_colour votes (nearest shade in CIELAB)
        named = [ds.name_colour(p[None]) for p in px[:: max(1, len(px) // 3000)]]
        frac2 = np.mean([n == c2 for n in named])
        frac1 = np.mean([n == c1 for n in named])
        assert frac2 > 0.03, (r["image"], c2, frac2)
        # a lattice crosses c2 bands both ways: c1 alone shows in the cells between them only
        assert frac1 > (0.1 if r["pattern"] == "lattice" else 0.2), (r["image"], c1, frac1)
        seen += 1
    assert seen >= 5


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    synthetic._main(["--out", str(out), "--n_per_kind", "1", "--seed", "2", "--width", str(W),
                     "--height", str(H), "--no_progress"])
    text = capsys.readouterr().out
    assert str(out) in text
    for kind in synthetic.KINDS:
        assert f"{kind}: 1" in text
    assert (out / ".complete").exists()
