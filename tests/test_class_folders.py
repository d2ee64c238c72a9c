"""Photos in class folders (DIR/<kind>/, DIR/<split>/<kind>/): kinds from the folder
names, held-out splits, derived captions, junk, and every command reading them."""
import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

import datasets as ds
import evaluate
import main
from captions import COLOURS, KINDS
from config import Config
from conftest import CLOTHING_SMALL, tiny_args
from sample import Drawer
from utils import UserError

# clothing-small's kinds -> the folder names the re-laid tree uses (any synonym works)
FOLDER_OF = {"t-shirt": "T-Shirts", "dress": "dresses", "pants": "Trousers", "shoes": "sneakers"}
NOUN = {"t-shirt": "T-shirt", "dress": "dress", "pants": "pants", "leggings": "leggings",
        "shoes": "shoes"}
PER_KIND = {"train": 12, "validation": 4}


def prepare(root, size=16, **kw):
    return ds.prepare(Config(data_dir=str(root), **kw), size, progress=False)


def derived(kind, colour):
    """The captions derive_captions gives a photo without sentences of its own."""
    noun = NOUN[kind]
    article = "a pair of" if kind in ("pants", "leggings", "shoes") else \
        "an" if colour[0] in "aeiou" else "a"
    long = f"A pair of {colour} shoes." if kind == "shoes" else f"A {colour} {noun}."
    return [long, f"{article} {colour} {noun}", f"{colour} {noun}"]


def relay_clothing_small(root):
    """Links to clothing-small photos in train/<kind>/ and validation/<kind>/ (the first
    PER_KIND of each kind and split), and in hats/ and shorts/ folders, kinds that are
    not kept. Returns ({key: labels.csv row}, {key of a photo with a .txt: its text})."""
    rows = list(csv.DictReader(open(CLOTHING_SMALL / "labels.csv", newline="")))
    picked, spare = {}, []
    for kind in FOLDER_OF:
        for split, n in PER_KIND.items():
            mine = [r for r in rows if r["category"] == kind and r["split"] == split]
            picked.update({f"{split}/{FOLDER_OF[kind]}/{r['image']}": r for r in mine[:n]})
            spare += mine[n:n + 1]
    for key in [*picked, *(f"{s}/{r['image']}" for s, r in
                           zip(["train/hats"] * 3 + ["validation/shorts"] * 2, spare))]:
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(CLOTHING_SMALL / "images" / key.rsplit("/", 1)[1], root / key)
    # two photos get their clothing-small caption beside them: its colour word wins
    captions = json.loads((CLOTHING_SMALL / "captions.json").read_text())
    texts = {}
    for key in [k for k in picked if "/dresses/" in k][:2]:
        texts[key] = captions[key.rsplit("/", 1)[1]]
        (root / key).with_suffix(".txt").write_text(texts[key])
    return picked, texts


@pytest.mark.skipif(not CLOTHING_SMALL.is_dir(), reason="../shared/data/clothing-small not present")
def test_clothing_small_in_split_class_folders(tmp_path, capsys):
    root = tmp_path / "photos"
    picked, texts = relay_clothing_small(root)
    n_train, n_val = (PER_KIND[s] * len(FOLDER_OF) for s in ("train", "validation"))

    assert ds.main(["--data_dir", str(root), "--size", "16"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("layout: class folders")
    assert out[1:6] == [f"{k}: {16 if k in FOLDER_OF else 0}" for k in KINDS]
    assert out[6].startswith(f"held out: {n_val} of {n_train + n_val} (split validation")
    assert out[7] == "skipped folders: hats 3, shorts 2"
    assert out[8] == "skipped: 0"

    index = prepare(root)
    assert sorted(index["images"]) == sorted(picked)  # keys are paths under the folder
    # the same photos in the DFMM layout, captions naming neither garment nor colour:
    # a class-folder photo is measured and captioned exactly as a DFMM one
    dfmm = tmp_path / "dfmm"
    (dfmm / "images").mkdir(parents=True)
    for key in picked:
        os.symlink(CLOTHING_SMALL / "images" / picked[key]["image"], dfmm / "images" / key.replace("/", "_"))
    (dfmm / "captions.json").write_text(json.dumps({k.replace("/", "_"): texts.get(k, "A photo.")
                                                    for k in picked}))
    (dfmm / "labels.csv").write_text("image,category,split\n" + "".join(
        f"{k.replace('/', '_')},{r['category']},{r['split']}\n" for k, r in picked.items()))
    as_dfmm = prepare(dfmm)
    as_dfmm = {k: (c, caps) for k, c, caps in zip(as_dfmm["images"], as_dfmm["colours"],
                                                  as_dfmm["captions"])}
    agree, labelled = [], []
    for key, kind, split, colour, caps in zip(index["images"], index["kinds"], index["splits"],
                                              index["colours"], index["captions"]):
        row = picked[key]
        assert kind == row["category"] and split == row["split"] == key.split("/")[0]
        assert colour in COLOURS and as_dfmm[key.replace("/", "_")] == (colour, caps)
        if key in texts:  # "A navy dress." names its colour, which the sample keeps
            assert caps[0] == texts[key] and colour in texts[key].replace("gray", "grey")
        else:  # measured from the photo's pixels, then the kind noun and the short forms
            assert caps == derived(kind, colour)
            labelled.append({"gray": "grey"}.get(row["color"], row["color"]))
            agree.append(colour == labelled[-1])
    # clothing-small's own noisy colour label (the median of the photo's centre) agrees
    # with the measured name more often than naming every photo its commonest label would
    assert np.mean(agree) > max(labelled.count(c) for c in labelled) / len(labelled)
    assert len(set(index["colours"])) >= 5

    # training reads the train folders only; the checkpoint draws (the page's path) and
    # evaluate.py holds the validation folders out
    out_dir = tmp_path / "out"
    assert main.main(["--train", "y", "--stage", "1"] + tiny_args(root, out_dir)) == 0
    printed = capsys.readouterr().out
    assert (f"stage 1: {n_train} training images (t-shirt 12, dress 12, pants 12, leggings 0, "
            "shoes 12)") in printed
    ckpt = out_dir / "stage1" / "last.pt"
    assert (out_dir / "stage1" / "samples" / "epoch_0002.png").is_file()
    images = Drawer.load(ckpt, "cpu").draw(["a red dress"], 2, seed=0)
    assert images.shape == (2, 3, 16, 16) and images.isfinite().all()
    cfg = Config(data_dir=str(root), out_dir=str(tmp_path / "ev"), wandb_mode="disabled",
                 device="cpu")
    m = evaluate.evaluate(ckpt, cfg, n_per_kind=2, k=4, feat_epochs=1, feat_width=4,
                          progress=False)
    assert m["n_heldout"] == n_val and "no validation split" not in capsys.readouterr().out


def draw_garment(path, colour, size=(40, 56)):
    """A photo of one garment: a block of `colour` on a light background."""
    img = np.full((size[1], size[0], 3), 236, np.uint8)
    img[8:-8, 8:-8] = colour
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)


def test_kind_folders_without_a_split_level(tmp_path, capsys):
    root = tmp_path / "shop"
    folders = {"Tees": ("t-shirt", "red"), "Dresses": ("dress", "blue"), "jeans": ("pants", "navy"),
               "LEGGINGS": ("leggings", "black"), "Boots": ("shoes", "green"),
               "hat": (None, "yellow"), "skirts": (None, "red")}
    for folder, (kind, colour) in folders.items():
        for i in range(3):
            draw_garment(root / folder / f"{i}.png", COLOURS[colour][0])
    # the photos' own sentences: captions.json by path or by file name, and a .txt
    (root / "captions.json").write_text(json.dumps({"Dresses/0.png": "A dress with lace trim.",
                                                    "1.png": "Made for the summer."}))
    (root / "Dresses" / "2.txt").write_text("Soft linen, knee length.")

    assert ds.main(["--data_dir", str(root), "--size", "16"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1:6] == [f"{k}: 3" for k in KINDS]
    # no split level: whole photos are held out by a hash of their path (identity_split)
    assert out[6] == ("held out: 2 of 15 (split validation: never trained on, scored by "
                      "evaluate.py): 1 dress, 1 pants")
    assert out[7:] == ["skipped folders: hat 3, skirts 3", "skipped: 0"]

    index = prepare(root)
    by_key = {k: (kind, col, caps) for k, kind, col, caps in
              zip(index["images"], index["kinds"], index["colours"], index["captions"])}
    assert index["splits"] == [ds.identity_split(k) for k in index["images"]]
    assert index["splits"].count("validation") == 2
    for folder, (kind, colour) in folders.items():
        for i in range(3):
            assert by_key.get(f"{folder}/{i}.png", (None, colour))[:2] == (kind, colour)
    assert by_key["Dresses/0.png"][2][0] == "A dress with lace trim. The dress is blue."
    # a sentence that names no garment is kept, after one naming the folder's kind
    assert by_key["Tees/1.png"][2][0] == "A T-shirt. The T-shirt is red. Made for the summer."
    assert by_key["Dresses/2.png"][2][0] == "A dress. The dress is blue. Soft linen, knee length."
    assert by_key["jeans/0.png"][2] == derived("pants", "navy")
    assert by_key["Boots/0.png"][2] == ["A pair of green shoes.", "a pair of green shoes",
                                        "green shoes"]
    # captions.json and the .txt files are what the embeddings cache is checked against
    assert ds.list_jobs(root, Config(data_dir=str(root)))[2] == {
        "Dresses/0.png": "A dress with lace trim.", "Dresses/1.png": "Made for the summer.",
        "Tees/1.png": "Made for the summer.", "jeans/1.png": "Made for the summer.",
        "LEGGINGS/1.png": "Made for the summer.", "Boots/1.png": "Made for the summer.",
        "Dresses/2.png": "Soft linen, knee length."}


@pytest.mark.parametrize("name, kind", [
    ("t-shirt", "t-shirt"), ("T-Shirts", "t-shirt"), ("tshirt", "t-shirt"), ("T_Shirt", "t-shirt"),
    ("tee", "t-shirt"), ("Tees", "t-shirt"), ("top", "t-shirt"), ("Tops", "t-shirt"),
    ("dress", "dress"), ("DRESSES", "dress"), ("pants", "pants"), ("Trousers", "pants"),
    ("jeans", "pants"), ("leggings", "leggings"), ("Legging", "leggings"), ("shoes", "shoes"),
    ("Sneakers", "shoes"), ("boots", "shoes"), ("heels", "shoes"), ("footwear", "shoes"),
    ("hats", None), ("shorts", None), ("skirts", None), ("outerwear", None), ("shirt", None),
    ("longsleeve", None), ("", None), ("s", None)])
def test_one_mapping_of_folder_and_category_names(name, kind):
    assert ds.normalise_kind(name) == kind


def test_split_folders_val_and_test_are_held_out(tmp_path):
    root = tmp_path / "d"
    for split in ("Train", "val", "test", "validation"):
        for i in range(2):
            draw_garment(root / split / "dress" / f"{i}.jpg", COLOURS["red"][0])
    draw_garment(root / "shoes" / "0.jpg", COLOURS["black"][0])  # no split level: train
    index = prepare(root)
    splits = dict(zip(index["images"], index["splits"]))
    assert splits == {"Train/dress/0.jpg": "train", "Train/dress/1.jpg": "train",
                      "shoes/0.jpg": "train",
                      **{f"{s}/dress/{i}.jpg": "validation" for s in ("val", "test", "validation")
                         for i in range(2)}}
    # held-out photos only: training says so in one line
    only_held = tmp_path / "held"
    draw_garment(only_held / "val" / "dress" / "0.jpg", COLOURS["red"][0])
    draw_garment(only_held / "test" / "shoes" / "0.jpg", COLOURS["red"][0])
    index = prepare(only_held)
    with pytest.raises(UserError, match="all 2 samples are held out"):
        ds.FashionData(index, np.zeros((len(ds.caption_texts(index)), 4), np.float32))


def test_junk_is_counted_never_a_traceback(tmp_path, capsys):
    root = tmp_path / "d"
    draw_garment(root / "dress" / "ok.jpg", COLOURS["red"][0])
    draw_garment(root / "dress" / "a" / "b" / "nested.jpg", COLOURS["red"][0])  # read
    deep = root / "dress" / "/".join("n" * (ds.MAX_FOLDER_DEPTH + 1))
    draw_garment(deep / "too_deep.jpg", COLOURS["red"][0])
    (root / "dress" / "notes.md").write_text("not a photo")
    (root / "dress" / ".DS_Store").write_bytes(b"\0\1")  # hidden: not read
    (root / "dress" / "text.jpg").write_text("not a JPEG")
    (root / "dress" / "empty.jpg").write_bytes(b"")
    os.symlink(root / "gone.jpg", root / "dress" / "dangling.jpg")
    os.symlink(root / "dress", root / "dress" / "loop")  # a link loop
    os.symlink(root, root / "dress" / "up")  # the whole tree again
    os.symlink(tmp_path, root / "dress" / "above")  # a folder above it
    (root / "dress" / "ok.txt").write_bytes(b"x" * (ds.MAX_CAPTION_TXT + 1))
    (root / "leggings").mkdir()  # an empty class folder
    draw_garment(root / "stray.jpg", COLOURS["red"][0])  # outside any class folder
    draw_garment(root / "train" / "stray.jpg", COLOURS["red"][0])
    os.symlink(root, root / "shoes")  # a class folder that is the whole tree again
    os.symlink(tmp_path, root / "train" / "tees")
    fd = os.open(os.path.join(os.fsencode(root / "dress"), b"bad-\xff.jpg"),
                 os.O_WRONLY | os.O_CREAT)
    os.close(fd)

    assert ds.main(["--data_dir", str(root), "--size", "16"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "dress: 2" in out and "leggings: 0" in out
    expected = {"unreadable image": 3, "empty class folder": 1,
                "file or folder name that is not UTF-8": 1, "folder nested over 8 deep": 1,
                "link back into the data folder or above (not followed)": 5,
                "not an image file": 1, "photo outside a class folder": 2,
                "unreadable caption .txt": 1}
    assert out[-1] == f"skipped: {sum(expected.values())} (" + ", ".join(
        f"{v} {k}" for k, v in sorted(expected.items())) + ")"
    index = prepare(root)
    assert index["skipped"] == expected
    assert sorted(index["images"]) == ["dress/a/b/nested.jpg", "dress/ok.jpg"]


def test_mixed_and_empty_layouts_say_what_they_read(tmp_path, capsys):
    # images/ and class folders: images/ + captions.json are read, and a line says so
    root = tmp_path / "mixed"
    draw_garment(root / "images" / "a.jpg", COLOURS["red"][0])
    (root / "captions.json").write_text(json.dumps({"a.jpg": "A red dress."}))
    (root / "labels.csv").write_text("image,category\na.jpg,dress\n")
    draw_garment(root / "shoes" / "b.jpg", COLOURS["black"][0])
    index = prepare(root)
    assert index["images"] == ["a.jpg"]
    assert "holds images/ and class folders (shoes): reading images/ + captions.json" in \
        capsys.readouterr().out
    # only folders of kinds not kept: one line naming them
    only_hats = tmp_path / "hats_only"
    draw_garment(only_hats / "train" / "hats" / "h.jpg", COLOURS["red"][0])
    with pytest.raises(UserError, match=r"no photos of a kept kind .*\(skipped folders: hats 1\)"):
        prepare(only_hats)
    assert ds.main(["--data_dir", str(only_hats)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no photos of a kept kind")
