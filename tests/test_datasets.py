import dataclasses
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import datasets as ds
from captions import KINDS
from config import Config
from conftest import CLOTHING_SMALL, COLORS, draw_person, write_dfmm
from get_embeddings import load_data
from utils import UserError


def cfg_for(root, **kw):
    return Config(data_dir=str(root), **kw)


def test_filter_counts_every_category_token(dfmm):
    root, info = dfmm
    index = ds.prepare(cfg_for(root), 32, progress=False)
    counts = {k: index["kinds"].count(k) for k in KINDS}
    assert counts == info["counts"]
    # dropped categories give no garment sample, only their shoes
    for img, kind in zip(index["images"], index["kinds"]):
        if any(t in img for t in ("Shorts", "Skirts", "Blouses_Shirts", "Jackets", "Sweaters")):
            assert kind == "shoes"
    assert index["skipped"] == {}


def test_shoes_are_footwear_crops_with_colour_captions(dfmm):
    root, _ = dfmm
    index = ds.prepare(cfg_for(root), 32, progress=False)
    arr = np.load(index["images_path"])
    shoes = [i for i, k in enumerate(index["kinds"]) if k == "shoes"]
    assert shoes
    for i in shoes:
        # the caption's footwear sentence is the long caption; it names the colour itself
        assert index["captions"][i][0].endswith("wears a pair of black shoes.")
        assert index["colours"][i] == "black"
        assert index["captions"][i][1:] == ["a pair of black shoes", "black shoes"]
        # the crop is centred on the footwear: in the whole photo it covers under 4% of
        # the pixels, in the crop over 10%
        dark = (arr[i].max(axis=2) < 90).mean()
        assert dark > 0.10, dark
    tees = [i for i, k in enumerate(index["kinds"]) if k == "t-shirt"]
    # a garment crop is centred on its parsing region: the centre pixel is the garment colour
    for i in tees:
        centre = arr[i][16, 16].astype(int)
        assert abs(centre - 235).max() > 60


def test_without_segm_no_shoes_and_whole_photo(tmp_path):
    root = tmp_path / "d"
    info = write_dfmm(root, with_segm=False)
    index = ds.prepare(cfg_for(root), 16, progress=False)
    assert index["kinds"].count("shoes") == 0
    assert len(index["kinds"]) == sum(info["counts"].values())


def test_labels_csv_takes_precedence(tmp_path):
    root = tmp_path / "d"
    write_dfmm(root, with_segm=False)
    names = sorted(json.loads((root / "captions.json").read_text()))
    rows = ["image,category,split"] + [f"{n},{'shoes' if i % 2 else 'dress'},"
                                       f"{'validation' if i == 0 else 'train'}"
                                       for i, n in enumerate(names)]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    index = ds.prepare(cfg_for(root), 16, progress=False)
    assert set(index["kinds"]) == {"dress", "shoes"}
    assert len(index["kinds"]) == len(names)
    assert index["splits"].count("validation") == 1


def test_missing_and_corrupt_images_are_skipped_and_counted(dfmm):
    root, info = dfmm
    caps = json.loads((root / "captions.json").read_text())
    caps["WOMEN-Dresses-id_09999999-01_1_front.jpg"] = "A dress with no photo."
    (root / "captions.json").write_text(json.dumps(caps))
    victim = next(n for n in caps if "Dresses" in n and (root / "images" / n).exists())
    data = (root / "images" / victim).read_bytes()
    (root / "images" / victim).write_bytes(data[: len(data) // 3])  # truncated JPEG
    empty = next(n for n in caps if "Pants-" in n)
    (root / "images" / empty).write_bytes(b"")
    index = ds.prepare(cfg_for(root), 16, progress=False)
    assert index["skipped"] == {"image file missing": 1, "unreadable image": 2}
    assert index["kinds"].count("dress") == info["counts"]["dress"] - 1
    assert index["kinds"].count("pants") == info["counts"]["pants"] - 1


def test_odd_image_modes_are_converted(tmp_path):
    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    rgb = np.zeros((40, 30, 3), np.uint8)
    rgb[:, :, 0] = 200
    base = Image.fromarray(rgb)
    variants = {"L": base.convert("L"), "CMYK": base.convert("CMYK"), "P": base.convert("P"),
                "RGBA": base.convert("RGBA")}
    caps = {}
    for i, (mode, im) in enumerate(variants.items()):
        ext = "jpg" if mode in ("L", "CMYK") else "png"
        name = f"WOMEN-Dresses-id_{i:08d}-01_1_front.{ext}"
        im.save(root / "images" / name)
        caps[name] = f"A {mode} dress."
    (root / "captions.json").write_text(json.dumps(caps))
    index = ds.prepare(cfg_for(root), 16, progress=False)
    assert index["n"] == 4 and index["skipped"] == {}
    arr = np.load(index["images_path"])
    assert arr.shape == (4, 16, 16, 3)


def test_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        ds.prepare(cfg_for(tmp_path / "nowhere"), 16)
    (tmp_path / "a").mkdir()
    with pytest.raises(UserError, match="captions.json is missing"):
        ds.prepare(cfg_for(tmp_path / "a"), 16)
    (tmp_path / "a" / "captions.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        ds.prepare(cfg_for(tmp_path / "a"), 16)
    (tmp_path / "a" / "captions.json").write_text('["a list"]')
    with pytest.raises(UserError, match="JSON object"):
        ds.prepare(cfg_for(tmp_path / "a"), 16)
    (tmp_path / "a" / "captions.json").write_text(json.dumps({"x.jpg": "A dress."}))
    with pytest.raises(UserError, match="images is missing"):
        ds.prepare(cfg_for(tmp_path / "a"), 16)
    (tmp_path / "a" / "images").mkdir()
    with pytest.raises(UserError, match="none of the 1 images"):
        ds.prepare(cfg_for(tmp_path / "a"), 16)


def test_cache_is_built_once_and_rebuilt_on_change(dfmm):
    root, _ = dfmm
    cfg = cfg_for(root)
    index = ds.prepare(cfg, 16, progress=False)
    mtime = os.stat(index["images_path"]).st_mtime_ns
    again = ds.prepare(cfg, 16, progress=False)
    assert os.stat(again["images_path"]).st_mtime_ns == mtime
    caps = json.loads((root / "captions.json").read_text())
    name = next(iter(caps))
    caps[name] = "A changed caption about a t-shirt."
    (root / "captions.json").write_text(json.dumps(caps))
    third = ds.prepare(cfg, 16, progress=False)
    assert third["key"] != index["key"]
    # the changed photo is a kept T-shirt: both its samples (the T-shirt and its shoes)
    # carry the new caption, and every other sample is as before
    assert name.split("-")[1] == "Tees_Tanks"
    assert [s for im, s in zip(third["images"], third["sources"]) if im == name] == \
        ["A changed caption about a t-shirt."] * 2

    def others(ix):
        return [(im, k, s) for im, k, s in zip(ix["images"], ix["kinds"], ix["sources"]) if im != name]

    assert others(third) == others(index) and len(others(index)) == index["n"] - 2


def test_training_batches_and_wrong_pairs(dfmm):
    root, _ = dfmm
    cfg = cfg_for(root)
    data = load_data(cfg, 16, progress=False)
    assert len(data) == len(data.kinds) == data.emb.shape[0]
    gen = torch.Generator().manual_seed(0)
    idx = next(data.batches(6, gen))
    real, wrong, emb, labels = data.batch(idx, cfg, gen)
    assert real.shape == wrong.shape == (6, 3, 16, 16) and emb.shape == (6, 384)
    assert real.min() >= -1 and real.max() <= 1
    assert labels.tolist() == data.labels[torch.as_tensor(idx)].tolist()
    # each sample's text is one of its own captions' embeddings
    for row, i in zip(emb, idx):
        own = data.text_emb[data.text_start[i]: data.text_start[i] + data.text_count[i]]
        assert (own == row).all(1).any()
    # over many draws every caption of a sample is used
    drawn = {tuple(data.caption_emb([0] * 64, gen).unique(dim=0).shape)}
    assert drawn == {(int(data.text_count[0]), 384)}
    # "wrong" images differ from the real ones in kind, colour or pattern
    attrs = list(zip(data.kinds, data.colours, data.patterns))
    for _ in range(20):
        idx = next(data.batches(8, gen))
        j = data.wrong_indices(idx, gen)
        assert all(attrs[a] != attrs[b] for a, b in zip(idx.tolist(), j.tolist()))
    # hard negatives: with same_kind=1 the wrong image is mostly of the real one's kind
    idx = np.arange(len(data))
    share = {}
    for p in (0.0, 1.0):
        j = data.wrong_indices(idx, torch.Generator().manual_seed(5), p).tolist()
        share[p] = np.mean([data.kinds[a] == data.kinds[b] for a, b in zip(idx, j)])
        assert all(attrs[a] != attrs[b] for a, b in zip(idx, j))
    assert share[1.0] > share[0.0] + 0.2
    # every sample is visited once per epoch; ranks split an epoch without overlap
    seen = torch.cat(list(data.batches(1, torch.Generator().manual_seed(1)))).tolist()
    assert sorted(seen) == list(range(len(data)))
    r0 = torch.cat(list(data.batches(2, torch.Generator().manual_seed(3), rank=0, world=2)))
    r1 = torch.cat(list(data.batches(2, torch.Generator().manual_seed(3), rank=1, world=2)))
    assert len(r0) == len(r1) > 0 and not set(r0.tolist()) & set(r1.tolist())


def test_augment_flips_and_shifts_on_tensors():
    x = torch.linspace(-1, 1, 16).view(1, 1, 1, 16).expand(16, 3, 16, 16).contiguous()
    y = ds.augment(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    assert not torch.equal(x, y)
    assert y.min() >= -1 and y.max() <= 1
    # some images are mirrored: their left edge is brighter than their right edge
    flipped = (y[:, 0, 8, 0] > y[:, 0, 8, -1])
    unflipped = (y[:, 0, 8, 0] < y[:, 0, 8, -1])
    assert flipped.any() and unflipped.any()


def test_cli_prints_kind_counts(dfmm, capsys):
    root, info = dfmm
    ds.main(["--data_dir", str(root), "--size", "16"])
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0] == "layout: DFMM (images/ + captions.json)"
    assert out[1:6] == [f"{k}: {info['counts'][k]}" for k in KINDS]
    n = sum(info["counts"].values())
    # the fixture's garments 22 and 23 (a sweater and a cardigan, not kept) are held out:
    # the shoes cut from their photos
    assert out[6] == f"held out: 2 of {n} (split validation: never trained on, scored by evaluate.py): 2 shoes"
    assert out[7] == "skipped: 0"


@pytest.mark.skipif(not CLOTHING_SMALL.is_dir(), reason="../shared/data/clothing-small not present")
def test_clothing_small_real_photos(tmp_path, capsys):
    ds.main(["--data_dir", str(CLOTHING_SMALL), "--cache_dir", str(tmp_path), "--size", "32"])
    out = capsys.readouterr().out
    assert "t-shirt: 876" in out and "pants: 517" in out and "dress: 273" in out
    assert "shoes: 224" in out and "leggings: 0" in out and "skipped: 0" in out


# ------------------------------------------------------------------ held-out split

VIEWS = ("01_1_front", "01_2_side", "01_3_back", "02_1_front")  # two photo sets of one item


def write_views(root, n_garments: int) -> dict:
    """A DFMM folder of `n_garments` garments (ids 1000, 1003, ...) with every view of
    VIEWS and parsing maps, so each photo also gives a shoes sample. Returns
    {image: garment id}."""
    (root / "images").mkdir(parents=True)
    (root / "segm").mkdir()
    rng = np.random.default_rng(0)
    tokens = [("Tees_Tanks", "t-shirt"), ("Dresses", "dress"), ("Denim", "pants"),
              ("Leggings", "leggings")]
    captions, garment = {}, {}
    for g in range(n_garments):
        token, kind = tokens[g % len(tokens)]
        item = f"id_{1000 + 3 * g:08d}"
        for view in VIEWS:
            name = f"WOMEN-{token}-{item}-{view}.jpg"
            img, segm = draw_person(rng, kind, COLORS["red"], COLORS["black"])
            Image.fromarray(img).save(root / "images" / name, quality=90)
            Image.fromarray(segm, mode="L").save(root / "segm" / name.replace(".jpg", "_segm.png"))
            captions[name] = f"The lady wears a red {kind}. She wears a pair of black shoes."
            garment[name] = item
    (root / "captions.json").write_text(json.dumps(captions))
    return garment


def test_identity_split_keeps_every_view_of_a_garment_and_its_shoes_on_one_side(tmp_path):
    root = tmp_path / "views"
    garment = write_views(root, 60)
    index = ds.prepare(cfg_for(root), 16, progress=False, workers=1)
    assert len(index["kinds"]) == 2 * len(garment)  # every photo: its garment and its shoes
    side = {}
    for image, kind, split in zip(index["images"], index["kinds"], index["splits"]):
        side.setdefault(garment[image], set()).add(split)
    assert all(len(s) == 1 for s in side.values())  # all views and all shoes: one side
    held = [g for g, s in side.items() if s == {"validation"}]
    assert 0 < len(held) < len(side) / 4
    assert held == [g for g in side if ds.identity_split(f"MEN-Pants-{g}-09_7_additional.jpg")
                    == "validation"]  # decided by the garment's id alone
    # training never sees them: FashionData's training split holds no held-out garment
    data = ds.FashionData(index, np.zeros((len(ds.caption_texts(index)), 4), np.float32))
    trained = {garment[index["images"][r]] for r in data.rows}
    assert trained == set(side) - set(held)


def test_identity_split_is_fixed_and_about_ten_percent(tmp_path):
    names = [f"{'MEN-Denim' if i % 2 else 'WOMEN-Dresses'}-id_{i:08d}-{1 + i % 3:02d}_"
             f"{1 + i % 4}_front.jpg" for i in range(1, 3001)]
    splits = [ds.identity_split(n) for n in names]
    assert 0.085 < splits.count("validation") / len(names) < 0.115
    # fixed for good (SHA-256, not Python's per-process salted hash): these garments
    # are held out in every process, on every machine
    held = [i for i in range(1, 201) if ds.identity_split(f"MEN-Pants-id_{i:08d}-01_1_front.jpg")
            == "validation"]
    assert held == [22, 23, 26, 28, 45, 49, 57, 58, 62, 65, 94, 114, 121, 130, 133, 137, 166, 167]
    # other names: the file name is hashed
    other = [f"dress-{i:05d}.jpg" for i in range(3000)]
    share = sum(ds.identity_split(n) == "validation" for n in other) / len(other)
    assert 0.085 < share < 0.115 and ds.garment_identity("dress-00001.jpg") == "dress-00001.jpg"
    # a folder's split depends on neither --seed nor the other files in it
    root = tmp_path / "views"
    garment = write_views(root, 12)
    a = ds.prepare(cfg_for(root, seed=0), 16, progress=False, workers=1)
    for name in list(garment)[::2]:
        (root / "images" / name).unlink()
    b = ds.prepare(cfg_for(root, seed=7), 16, progress=False, workers=1)
    split_a = dict(zip(zip(a["images"], a["kinds"]), a["splits"]))
    assert all(split_a[key] == s for key, s in zip(zip(b["images"], b["kinds"]), b["splits"]))


def test_labels_csv_splits_are_kept_and_without_a_split_column_names_are_hashed(tmp_path):
    root = tmp_path / "views"
    garment = write_views(root, 20)
    names = sorted(garment)
    # the split column decides, even against the identity rule (an empty cell: train)
    given = {n: ("validation" if i % 3 == 0 else "" if i % 3 == 1 else "train")
             for i, n in enumerate(names)}
    rows = ["image,category,split"] + [f"{n},dress,{s}" for n, s in given.items()]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    index = ds.prepare(cfg_for(root), 16, progress=False, workers=1)
    assert dict(zip(index["images"], index["splits"])) == {n: s or "train"
                                                           for n, s in given.items()}
    # no split column: the garment identity decides, as without labels.csv
    (root / "labels.csv").write_text("image,category\n" + "".join(f"{n},dress\n" for n in names))
    index = ds.prepare(cfg_for(root), 16, progress=False, workers=1)
    assert dict(zip(index["images"], index["splits"])) == {n: ds.identity_split(n) for n in names}


def test_a_new_split_rule_changes_the_cache_key(dfmm):
    """An image cache built when every photo of a folder without splits was "train"
    is not reused: the key holds each photo's split."""
    root, _ = dfmm
    cfg = cfg_for(root)
    jobs, _, _ = ds.list_jobs(root, cfg)
    assert {j.split for j in jobs} == {"train", "validation"}
    old = [dataclasses.replace(j, split="train") for j in jobs]
    assert ds._cache_key(root, jobs, cfg, 16) != ds._cache_key(root, old, cfg, 16)
