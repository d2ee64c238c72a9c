"""Garment captions derived from DFMM outfit captions and the garment's own pixels."""
import json

import numpy as np
import pytest
from PIL import Image

import captions
import datasets as ds
from captions import COLOURS
from config import Config

# DFMM writes captions like these: the whole outfit, by shape, fabric and pattern class
DFMM_CAPTION = ("This person is wearing a long-sleeve sweater with pure color patterns. The sweater "
                "is with cotton fabric and its neckline is v-shape. This person wears a long trousers. "
                "The trousers are with denim fabric and striped patterns. There is an accessory on "
                "her wrist. This woman wears a pair of sneakers.")
DFMM_DRESS = ("The lady wears a sleeveless dress with floral patterns. It has a round neckline. "
              "The dress is with chiffon fabric. This lady wears a ring.")


@pytest.mark.parametrize("name,rgb", [
    ("red", (200, 32, 42)), ("red", (150, 25, 30)), ("red", (225, 70, 70)),
    ("pink", (250, 190, 210)), ("navy", (22, 30, 70)), ("blue", (110, 160, 230)),
    ("blue", (35, 80, 170)), ("green", (20, 90, 40)), ("green", (120, 190, 120)),
    ("yellow", (242, 206, 40)), ("white", (240, 240, 238)), ("black", (15, 15, 18)),
    ("grey", (128, 130, 135)), ("beige", (215, 195, 155)), ("brown", (95, 60, 30)),
    ("purple", (118, 56, 160)), ("orange", (240, 126, 30))])
def test_painted_parsing_region_is_named_in_cielab(tmp_path, name, rgb):
    """A photo with a dress region painted in one shade (dark, mid or light), shaded a
    little as real cloth is, on a light background: the derived captions name it."""
    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    (root / "segm").mkdir()
    rng = np.random.default_rng(0)
    img = np.full((88, 60, 3), 236, np.uint8)
    segm = np.zeros((88, 60), np.uint8)
    shade = np.clip(np.asarray(rgb) * rng.uniform(0.93, 1.04, (60, 36, 1)), 0, 255)
    img[15:75, 12:48] = shade.astype(np.uint8)
    segm[15:75, 12:48] = 4
    stem = "WOMEN-Dresses-id_00000001-01_1_front"
    Image.fromarray(img).save(root / "images" / f"{stem}.jpg", quality=92)
    Image.fromarray(segm, mode="L").save(root / "segm" / f"{stem}_segm.png")
    (root / "captions.json").write_text(json.dumps({f"{stem}.jpg": DFMM_DRESS}))
    index = ds.prepare(Config(data_dir=str(root)), 32, progress=False)
    assert index["colours"] == [name]
    assert index["captions"][0][0] == ("The lady wears a sleeveless dress with floral patterns. "
                                       f"The dress is {name}. It has a round neckline. "
                                       "The dress is with chiffon fabric.")
    article = "an" if name[0] in "aeiou" else "a"
    assert index["captions"][0][1:] == [f"{article} {name} floral dress",
                                        f"{name} dress with floral patterns"]


def test_two_colour_garment_is_named_by_its_main_colour():
    px = np.concatenate([np.tile([200, 32, 42], (700, 1)), np.tile([248, 248, 246], (300, 1))])
    assert ds.name_colour(px.astype(np.uint8)) == "red"
    for name, shades in COLOURS.items():
        for s in shades:
            assert ds.name_colour(np.tile(s, (10, 1)).astype(np.uint8)) == name


def test_sentences_are_selected_per_garment_kind():
    top = captions.garment_sentences(DFMM_CAPTION, "t-shirt")
    assert top == ["This person is wearing a long-sleeve sweater with pure color patterns.",
                   "The sweater is with cotton fabric and its neckline is v-shape."]
    lower = captions.garment_sentences(DFMM_CAPTION, "pants")
    assert lower == ["This person wears a long trousers.",
                     "The trousers are with denim fabric and striped patterns."]
    assert captions.garment_sentences(DFMM_CAPTION, "leggings") == lower
    assert captions.garment_sentences(DFMM_CAPTION, "shoes") == ["This woman wears a pair of sneakers."]
    # a pronoun sentence stays with its garment; accessories go nowhere
    assert captions.garment_sentences(DFMM_DRESS, "dress") == [
        "The lady wears a sleeveless dress with floral patterns.", "It has a round neckline.",
        "The dress is with chiffon fabric."]
    # a dress photo described as top and skirt falls back to the top's sentences
    assert captions.garment_sentences("Her tank top is with graphic patterns. The skirt is short.",
                                "dress") == ["Her tank top is with graphic patterns."]
    assert captions.garment_sentences("There is a ring on her finger.", "pants") == []


def test_derived_captions_per_kind_keep_only_that_garment():
    pants = captions.derive_captions("pants", DFMM_CAPTION, "navy")
    assert pants["captions"][0] == ("This person wears a long trousers. The pants are navy. "
                                    "The trousers are with denim fabric and striped patterns.")
    assert (pants["colour"], pants["pattern"]) == ("navy", "striped")
    assert "sweater" not in " ".join(pants["captions"])
    top = captions.derive_captions("t-shirt", DFMM_CAPTION, "red")
    assert top["pattern"] == "pure color" and top["captions"][1] == "a red T-shirt"
    shoes = captions.derive_captions("shoes", DFMM_CAPTION, "white")
    assert shoes["captions"][0] == "This woman wears a pair of sneakers. The shoes are white."
    # no sentence about the garment at all: a plain one
    none = captions.derive_captions("leggings", "There is a ring on her finger.", "black")
    assert none["captions"][:2] == ["A black leggings.", "a pair of black leggings"]
    # deterministic
    assert captions.derive_captions("pants", DFMM_CAPTION, "navy") == pants


def test_captions_that_name_a_colour_keep_it():
    d = captions.derive_captions("dress", "A black dress.", "red")  # clothing-small style
    assert d["colour"] == "black" and d["captions"] == ["A black dress.", "a black dress",
                                                        "black dress"]
    g = captions.derive_captions("pants", "The gentleman wears gray pants with stripes.", "blue")
    assert g["colour"] == "grey" and g["pattern"] == "striped"
    assert "gray pants" in g["captions"][0] and "blue" not in " ".join(g["captions"])


def test_texture_labels_fill_in_pattern_and_fabric(tmp_path):
    tex = tmp_path / "labels" / "texture"
    tex.mkdir(parents=True)
    # columns: upper lower outer; codes: pattern 0 floral, 2 striped, 4 lattice, 7 NA;
    # fabric 0 denim, 1 cotton, 5 chiffon
    (tex / "pattern_ann.txt").write_text("a.jpg 0 4 7\nb.jpg 7 7 7\nbroken line\n")
    (tex / "fabric_ann.txt").write_text("a.jpg 5 0 7\n")
    labels = ds.read_texture_labels(tmp_path)
    assert labels["a.jpg"] == {"pattern": ["floral", "lattice", None],
                               "fabric": ["chiffon", "denim", None]}
    assert labels["b.jpg"] == {"pattern": [None, None, None]}
    caption = "The lady wears a long-sleeve T-shirt. The gentleman wears long pants."
    top = captions.derive_captions("t-shirt", caption, "pink", labels["a.jpg"])
    assert (top["pattern"], top["fabric"]) == ("floral", "chiffon")
    assert top["captions"][0] == ("The lady wears a long-sleeve T-shirt. The T-shirt is pink. "
                                  "It has floral patterns. It is with chiffon fabric.")
    low = captions.derive_captions("pants", caption, "blue", labels["a.jpg"])
    assert (low["pattern"], low["fabric"]) == ("lattice", "denim")
    assert low["captions"][1] == "a pair of blue plaid pants"
    # the caption's own words win over the labels
    own = captions.derive_captions("pants", "He wears striped pants.", "blue", labels["a.jpg"])
    assert own["pattern"] == "striped"
    assert ds.read_texture_labels(tmp_path / "nowhere") == {}


def test_derivation_is_in_the_cache_key_and_the_show_listing(dfmm, capsys):
    root, _ = dfmm
    cfg = Config(data_dir=str(root))
    first = ds.prepare(cfg, 16, progress=False)
    tex = root / "labels" / "texture" / "pattern_ann.txt"
    tex.write_text(tex.read_text().replace(" 1 1 7", " 2 2 7"))  # graphic -> striped
    second = ds.prepare(cfg, 16, progress=False)
    assert second["key"] != first["key"]
    # every cache size derives the same captions: colours are measured at one scale
    assert ds.prepare(cfg, 32, progress=False)["captions"] == second["captions"]
    assert ds.main(["--data_dir", str(root), "--size", "16", "--show", "3"]) == 0
    out = capsys.readouterr().out
    blocks = [b for b in out.split("\n[") if "source:" in b]
    assert len(blocks) == 3
    for b in blocks:
        lines = b.strip().splitlines()
        i = int(lines[0].split("]")[0].lstrip("["))
        assert f"colour {second['colours'][i]}" in lines[0]
        assert lines[1].strip() == f"source:  {second['sources'][i]}"
        assert [x.strip()[len("derived: "):] for x in lines[2:]] == second["captions"][i]


def test_sweep_prompts_are_the_short_caption_forms():
    assert captions.sweep_prompts("colour", "dress")[:2] == ["a red dress", "an orange dress"]
    assert captions.sweep_prompts("pattern", "pants") == [
        "a pair of red pants", "a pair of red striped pants", "a pair of red dotted pants",
        "a pair of red plaid pants", "a pair of red floral pants"]
    # each is exactly a short caption the training derives for such a garment
    shorts = {captions.derive_captions("t-shirt", f"The T-shirt has {p} patterns.", "red")["captions"][1]
              for p in captions.SWEEP_PATTERNS}
    assert shorts == set(captions.sweep_prompts("pattern", "t-shirt"))
