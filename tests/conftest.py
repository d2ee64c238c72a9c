import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CLOTHING_SMALL = ROOT.parent / "shared" / "data" / "clothing-small"

# (file-name category token, kind the loader must give it or None when dropped)
CATEGORIES = [("Tees_Tanks", "t-shirt"), ("Graphic_Tees", "t-shirt"), ("Dresses", "dress"),
              ("Pants", "pants"), ("Denim", "pants"), ("Leggings", "leggings"),
              ("Shorts", None), ("Skirts", None), ("Blouses_Shirts", None),
              ("Jackets_Coats", None), ("Sweaters", None), ("Cardigans", None)]
PARSING = {"t-shirt": 1, "dress": 4, "pants": 5, "leggings": 6}
COLORS = {"red": (200, 30, 30), "blue": (40, 60, 200), "green": (40, 150, 60), "black": (20, 20, 20)}
W, H = 60, 88  # portrait, like DFMM's 750x1101


def draw_person(rng, kind, color, shoes_color):
    """A light photo with a garment block and, at the bottom, two shoes; its parsing map."""
    img = np.full((H, W, 3), 235, np.uint8)
    segm = np.zeros((H, W), np.uint8)
    top, bottom = {"t-shirt": (10, 40), "dress": (10, 65), "pants": (40, 75),
                   "leggings": (40, 75), None: (20, 60)}[kind]
    x0, x1 = 15 + rng.integers(0, 4), 45 - rng.integers(0, 4)
    img[top:bottom, x0:x1] = color
    segm[top:bottom, x0:x1] = PARSING.get(kind, 2)
    img[78:86, 16:28] = shoes_color
    img[78:86, 32:44] = shoes_color
    segm[78:86, 16:28] = 11
    segm[78:86, 32:44] = 11
    return img, segm


def write_dfmm(root: Path, per_category: int = 2, with_segm=True, seed: int = 0,
               ids=None) -> dict:
    """A tiny DFMM-layout folder covering every category token, photo n (1, 2, ...)
    showing garment id_<ids[n - 1]> (default: id_<n>). Returns expectations."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    if with_segm:
        (root / "segm").mkdir()
    (root / "labels" / "shape").mkdir(parents=True)
    (root / "labels" / "texture").mkdir(parents=True)
    captions, expect = {}, {"t-shirt": 0, "dress": 0, "pants": 0, "leggings": 0, "shoes": 0}
    shape_lines, n = [], 0
    for token, kind in CATEGORIES:
        for k in range(per_category):
            n += 1
            gender = "WOMEN" if kind in ("dress", "leggings") or k % 2 else "MEN"
            item = n if ids is None else ids[n - 1]
            name = f"{gender}-{token}-id_{item:08d}-01_{1 + k % 2}_{'front' if k % 2 == 0 else 'side'}.jpg"
            cname = list(COLORS)[(n + k) % len(COLORS)]
            img, segm = draw_person(rng, kind, COLORS[cname], COLORS["black"])
            Image.fromarray(img).save(root / "images" / name, quality=90)
            if with_segm:
                Image.fromarray(segm, mode="L").save(root / "segm" / name.replace(".jpg", "_segm.png"))
                expect["shoes"] += 1
            who = "lady" if gender == "WOMEN" else "gentleman"
            garment = {"t-shirt": "T-shirt", "dress": "dress", "pants": "pants",
                       "leggings": "leggings", None: "outfit"}[kind]
            captions[name] = (f"The {who} wears a {cname} {garment} with pure color patterns. "
                              f"The {who} wears a pair of black shoes.")
            shape_lines.append(f"{name} 1 3 0 0 0 0 0 0 0 0 0 1")
            if kind:
                expect[kind] += 1
    (root / "captions.json").write_text(json.dumps(captions, indent=1))
    (root / "labels" / "shape" / "shape_anno_all.txt").write_text("\n".join(shape_lines) + "\n")
    for f in ("fabric_ann.txt", "pattern_ann.txt"):
        (root / "labels" / "texture" / f).write_text(
            "\n".join(f"{nm} 1 1 7" for nm in captions) + "\n")
    return {"counts": expect, "captions": captions}


@pytest.fixture
def dfmm(tmp_path):
    root = tmp_path / "dfmm"
    info = write_dfmm(root)
    return root, info


def tiny_args(data_dir, out_dir, cache_dir=None):
    """Flags of a tiny 16px -> 64px model that trains in seconds."""
    args = ["--data_dir", str(data_dir), "--out_dir", str(out_dir), "--wandb", "disabled",
            "--stage1_size", "16", "--stage2_size", "64", "--gf_dim", "4", "--df_dim", "4",
            "--r_num", "1", "--batch_size", "8", "--epochs", "2", "--lr_decay_epoch", "1",
            "--snapshot_interval", "1", "--n_samples", "2"]
    if cache_dir:
        args += ["--cache_dir", str(cache_dir)]
    return args
