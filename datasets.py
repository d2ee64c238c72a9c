"""Prepare DeepFashion-MultiModal (DFMM) data: five garment kinds, derived captions, an image cache.

    python datasets.py --data_dir DIR      # prints `KIND: N` per kind, the held-out count
                                           # and the skipped folders and files

Layout read (the real DFMM download, the built-in synthetic set and clothing-small):
    DIR/images/*.jpg               photos
    DIR/captions.json              {"<image>.jpg": "<caption>"}
    DIR/labels.csv      (optional) columns image, category[, split]: the kind (and split) of
                                   each image
    DIR/segm/<name>_segm.png (opt.) DFMM human parsing, ids 0-23
    DIR/labels/...      (optional) DFMM shape/fabric/pattern annotations (not needed here)

or, without images/, class folders (torchvision's ImageFolder layout):
    DIR/<class>/*.jpg              the kind from the folder name (normalise_kind)
    DIR/<split>/<class>/*.jpg      split train; validation, val or test (held out)
    DIR/<class>/<photo>.txt (opt.) and DIR/captions.json (opt.): the photos' own sentences

The kind of an image comes from labels.csv when it exists, else from the DFMM file
name `{MEN|WOMEN}-{Category}-id_...` through config.CATEGORY_MAP (Tees_Tanks and
Graphic_Tees -> t-shirt, Dresses -> dress, Pants and Denim -> pants, Leggings ->
leggings; Shorts, Skirts, ... are dropped).

Shoes: DFMM has no shoe category. When segm/ is there, every image whose parsing map
holds enough footwear (label 11) gives one extra "shoes" sample: a square crop around
the footwear region, captioned "A pair of <colour> shoes." (colour: the nearest named
colour to the median footwear pixel) followed by any caption sentence that mentions
footwear. The garment samples are likewise cropped around their own parsing region
(top, dress, pants, leggings) when the map has it, else the whole photo is padded to
a square.

Held-out split: labels.csv's split column when it has one ("validation" rows are
never trained on); otherwise about 10% of the garments, picked by a hash of DFMM's item
id (identity_split), so that no view of a held-out garment, nor the shoes cut from it,
is ever trained on.

Each image is decoded once into an on-disk uint8 cache per resolution
(DIR/cache/images_<size>.npy plus index_<size>.json); training reads that cache by
memory map and augments on tensors (flip, small shift/zoom).

The file is longer than the others because a real photo folder needs it: the kind
filter, the parsing-map crops and the colour measurement are what turn DFMM's outfit
photos into five-kind samples, and they belong together. The words of the captions
(the vocabulary, the sentences kept per garment, the short forms) are in captions.py.
"""
from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import os
import re
import stat
import sys
from collections import Counter
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFile, ImageOps
from tqdm import tqdm

from captions import (COLOUR_ALIASES, COLOURS, FABRICS, KIND_NOUN, KINDS, PATTERN_ALIASES,
                      PATTERNS, derive_captions, garment_sentences, normalise_kind)
from config import PATH, TEXT, CliParser, Config, flag_type, power_of_two, whole
from utils import (UserError, _atomic_write, atomic_path, clean_text, first_line, read_json,
                   reserve, run_cli)

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated JPEG is an error, and is skipped
COLOUR_PROBE_SIZE = 48  # colours are measured on the photo decoded for this size
NAME_RE = re.compile(r"^(MEN|WOMEN)-([A-Za-z_]+?)-id_(\d+)")  # gender, category, item
# class-folder tree: split folder name -> the split the rest of the code reads
# (FashionData trains on every split but "validation"; evaluate.py holds that one out)
SPLIT_FOLDERS = {"train": "train", "validation": "validation", "val": "validation",
                 "test": "validation"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
MAX_FOLDER_DEPTH = 8  # folders nested deeper than this inside a class folder are not read
MAX_CAPTION_TXT = 64 * 1024  # bytes: a longer .txt beside a photo is not a caption
SKIPPED_FOLDER = "folder of a kind not kept: "  # + the folder's name, counting its photos
CACHE_VERSION = 3  # 3: photos with an EXIF orientation are cached upright
BAD_CAPTION = "empty or non-text caption"  # the skip count of captions.json's unusable entries


# ---------------------------------------------------------------------------- reading

def read_captions(data_dir) -> tuple[dict, int]:
    """(captions, number of unusable entries). Raises UserError for a missing/broken file."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(f"data directory {data_dir} does not exist")
    path = data_dir / "captions.json"
    if not path.is_file():
        raise UserError(f"{path} is missing: a DFMM folder needs captions.json "
                        '({"<image>.jpg": "<caption>"}) beside images/; photos in class folders '
                        "(DIR/<kind>/*.jpg, DIR/train/<kind>/*.jpg) need none")
    raw = read_json(path, "captions file")
    if not isinstance(raw, dict):
        raise UserError(f"{path} must hold a JSON object mapping image names to captions, "
                        f"found a {type(raw).__name__}")
    # lone UTF-16 surrogates ("\ud800" is valid JSON) cannot be encoded: replaced by U+FFFD
    good = {clean_text(k): " ".join(clean_text(v).split()) for k, v in raw.items()
            if isinstance(v, str) and v.strip()}
    return good, len(raw) - len(good)


def read_labels_csv(data_dir) -> dict | None:
    """{image: (kind or None, split)} from labels.csv, or None when there is none. A
    file with a split column gives every row a split (an empty cell: "train"); one
    without it gives None, and list_jobs holds out garments itself (identity_split)."""
    path = Path(data_dir) / "labels.csv"
    if not path.is_file():
        return None
    try:
        rows = list(csv.reader(io.StringIO(decode_text(path.read_bytes()), newline="")))
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    except csv.Error as e:
        raise UserError(f"{path} is not a readable CSV file: {first_line(e)}") from None
    header = [h.strip().lower() for h in rows[0]] if rows else []
    if "image" not in header or "category" not in header:
        raise UserError(f"{path} needs the columns 'image' and 'category' in its first line")
    col = {name: header.index(name) for name in ("image", "category", "split") if name in header}

    def cell(row, name, default=""):
        i = col.get(name)
        return row[i].strip() if i is not None and i < len(row) else default

    has_split = "split" in col
    return {cell(r, "image"): (normalise_kind(cell(r, "category")),
                               (cell(r, "split") or "train") if has_split else None)
            for r in rows[1:] if cell(r, "image")}


def decode_text(data: bytes) -> str:
    """Text of a small label file: UTF-8 (a leading byte-order mark is dropped), else
    Latin-1, in which every byte is a character (spreadsheets export it)."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def read_caption_txt(path: Path) -> str | None:
    """The sentences of a caption file beside a photo (<photo>.txt), on one line; None
    when there is none. Raises OSError when it cannot be read or is too long."""
    if not path.is_file():
        return None
    if path.stat().st_size > MAX_CAPTION_TXT:
        raise OSError(f"longer than {MAX_CAPTION_TXT} bytes")
    return " ".join(clean_text(decode_text(path.read_bytes())).split())


def kind_from_name(name: str, category_map: dict):
    m = NAME_RE.match(name)
    return category_map.get(m.group(2)) if m else None


HOLDOUT_SHARE = 0.1  # share of garments identity_split holds out


def garment_identity(name: str) -> str:
    """The garment a photo shows: DFMM's item id ("id_00000080" of
    MEN-Denim-id_00000080-01_7_additional.jpg), else the file name itself.

    DFMM keeps DeepFashion In-shop's paths, <gender>/<category>/id_<item>/<NN>_<view#>_
    <view>.jpg, joined by dashes. The item id is what In-shop's own partition splits
    by; the NN after it numbers photo sets of that same item, so all of them, with
    every view, count as one garment."""
    m = NAME_RE.match(name)
    return f"id_{m.group(3)}" if m else name


def identity_split(name: str) -> str:
    """The split of a photo whose folder gives none: "validation" for about
    HOLDOUT_SHARE of the garments, else "train".

    Decided by a hash (SHA-256) of garment_identity(name) alone, so every view of one
    garment, and the shoes cut from its photos, fall on the same side; the split does
    not depend on file order, on the other files of the folder, on --seed or on the
    Python process. A name that is not DFMM-style is its own identity: the file name
    is hashed. Training never sees the "validation" side (FashionData), evaluate.py
    scores on it."""
    digest = hashlib.sha256(f"garment:{garment_identity(name)}".encode("utf-8", "surrogatepass"))
    return "validation" if int(digest.hexdigest()[:8], 16) < HOLDOUT_SHARE * 2 ** 32 else "train"


def segm_path(data_dir, image_name: str) -> Path:
    return Path(data_dir) / "segm" / (Path(image_name).stem + "_segm.png")


# ----------------------------------------------------------- garment colours and texture
#
# A sample's captions (captions.derive_captions) name its colour as measured here, from
# the garment's own pixels, and its pattern and fabric from DFMM's texture labels when
# the photo's sentences do not say them.

def _srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) sRGB 0-255 -> CIELAB (D65)."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = c @ np.array([[0.4124, 0.2126, 0.0193], [0.3576, 0.7152, 0.1192],
                        [0.1805, 0.0722, 0.9505]])
    xyz = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]),
                     200 * (f[..., 1] - f[..., 2])], -1)


_COLOUR_NAMES = list(COLOURS)
_SHADE_NAME_ID = np.array([i for i, shades in enumerate(COLOURS.values()) for _ in shades])
_SHADE_LAB = _srgb_to_lab(np.array([s for shades in COLOURS.values() for s in shades]))


@functools.lru_cache(maxsize=1)
def _shade_lut() -> np.ndarray:
    """Nearest shade (index into _SHADE_LAB) of every sRGB colour quantised to 5 bits."""
    levels = np.arange(32) * 8 + 4
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 3)
    lab = _srgb_to_lab(grid)
    return ((lab[:, None, :] - _SHADE_LAB[None]) ** 2).sum(-1).argmin(1).astype(np.int16)


def name_colour(pixels) -> str:
    """The colour name of a garment's pixels ((N, 3) uint8 sRGB): every pixel votes for
    its nearest vocabulary shade in CIELAB and the name with most votes wins, so a
    striped or printed garment is named by its main colour and shading does not turn a
    red dress brown."""
    px = np.asarray(pixels, dtype=np.uint8).reshape(-1, 3)
    if len(px) == 0:
        raise ValueError("name_colour needs at least one pixel")
    q = px.astype(np.int32) >> 3
    nearest = _shade_lut()[(q[:, 0] << 10) | (q[:, 1] << 5) | q[:, 2]]
    votes = np.bincount(_SHADE_NAME_ID[nearest], minlength=len(_COLOUR_NAMES))
    return _COLOUR_NAMES[int(votes.argmax())]  # a tie goes to the name listed first


def garment_pixels(crop: np.ndarray) -> np.ndarray:
    """The garment's pixels in a crop without a parsing map: those that differ from the
    border colour (the background), else the central half of the crop."""
    border = np.concatenate([crop[0], crop[-1], crop[:, 0], crop[:, -1]])
    bg = _srgb_to_lab(np.median(border, axis=0))
    dist = np.sqrt(((_srgb_to_lab(crop) - bg) ** 2).sum(-1))
    mask = dist > 12
    if mask.mean() < 0.05:
        h, w = crop.shape[:2]
        return crop[h // 4: h - h // 4, w // 4: w - w // 4].reshape(-1, 3)
    return crop[mask]


def read_texture_labels(data_dir) -> dict:
    """{image: {"pattern": name or None, "fabric": name or None, per column}} from DFMM's
    labels/texture/{pattern,fabric}_ann.txt (`<image> upper lower outer`, code 7 = NA);
    malformed lines are ignored, missing files give {}."""
    out: dict = {}
    for what, names in (("pattern", PATTERNS), ("fabric", FABRICS)):
        path = Path(data_dir) / "labels" / "texture" / f"{what}_ann.txt"
        if not path.is_file():  # missing, or a folder or pipe that would not read
            continue
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) != 4 or not all(p.isascii() and p.isdigit() for p in parts[1:]):
                continue
            out.setdefault(parts[0], {})[what] = [names[int(p)] if int(p) < len(names) else None
                                                  for p in parts[1:]]
    return out


@dataclass
class Job:
    image: str
    kind: str | None  # None: DFMM file-name category not kept, only shoes may come out
    caption: str
    split: str
    shoes: bool  # also cut a shoes sample from the parsing map
    texture: dict  # read_texture_labels entry ({} when the folder has none)
    stamp: tuple = ()  # (size, mtime) of the photo and of its parsing map (None: no map)
    root: str = "images"  # the folder under the data folder that `image` is a path in
    parsing: bool = True  # segm/ may hold its parsing map (DFMM; class folders have none)


def photo_path(data_dir, job: Job) -> Path:
    return Path(data_dir) / job.root / job.image


def file_stamp(path: Path):
    """(size, modification time in ns) of a regular file, following links; None when
    there is none (missing, a dangling link, a folder) or it cannot be read. A changed
    file changes its stamp, and so the cache key."""
    try:
        st = path.stat()
    except (OSError, ValueError):
        return None
    return (st.st_size, st.st_mtime_ns) if stat.S_ISREG(st.st_mode) else None


def list_jobs(data_dir, cfg: Config):
    """Which images to decode and why. Returns (jobs, skipped counter, captions.json as
    read). A folder without images/ but with class folders is read by
    list_class_folder_jobs; with both, images/ wins, and a line says so."""
    data_dir = Path(data_dir)
    layout, named = folder_layout(data_dir)
    if layout == "class folders":
        return list_class_folder_jobs(data_dir, cfg)
    if named:
        print(f"note: {data_dir} holds images/ and class folders ({', '.join(named)}): "
              "reading images/ + captions.json (the DFMM layout); the class folders are not read")
    captions, bad_captions = read_captions(data_dir)
    img_dir = data_dir / "images"
    if not img_dir.is_dir():
        raise UserError(f"{img_dir} is missing: a DFMM folder keeps its photos in images/")
    present = set(os.listdir(img_dir))
    labels = read_labels_csv(data_dir)
    has_segm = (data_dir / "segm").is_dir()
    texture = read_texture_labels(data_dir)
    skipped = Counter()
    if bad_captions:
        skipped[BAD_CAPTION] += bad_captions
    jobs = []
    for name in sorted(captions):
        if name not in present:
            skipped["image file missing"] += 1
            continue
        photo = file_stamp(img_dir / name)
        if photo is None:  # a dangling link, a folder, no permission
            skipped["unreadable image"] += 1
            continue
        if labels is not None:
            kind, split = labels.get(name, (None, None))
            shoes = False  # labels.csv names the shoe images itself
        else:
            kind, split = kind_from_name(name, cfg.category_map), None
            shoes = has_segm and segm_path(data_dir, name).is_file()
        if kind is None and not shoes:
            continue  # a kind we do not keep (Shorts, Skirts, ...): not an error
        if split is None:  # the folder gives no split: hold out whole garments
            split = identity_split(name)
        stamp = (photo, file_stamp(segm_path(data_dir, name)) if has_segm else None)
        jobs.append(Job(name, kind, captions[name], split, shoes, texture.get(name, {}), stamp))
    if not jobs and captions and not any(n in present for n in captions):
        raise UserError(f"none of the {len(captions)} images named in captions.json is in {img_dir}")
    return jobs, skipped, captions


# ------------------------------------------------------------------- class folders
#
# The most common layout of a labelled photo set: one folder per class, often under
# split folders (torchvision's ImageFolder). The kind comes from the folder's name
# through normalise_kind; folders of other kinds are skipped and counted by name.
# Each photo's key is its path under DIR ("train/dress/abc.jpg"), so names may repeat
# across folders. Its captions are derived as a DFMM garment's (derive_captions): the
# measured colour, the kind noun and the short forms, after the photo's own sentences
# from DIR/captions.json (keyed by that path or by the file name) and <photo>.txt.

def folder_layout(data_dir) -> tuple[str, list]:
    """("dfmm" or "class folders", the subfolders named after a kind or a split).
    DFMM when DIR/images/ exists or no subfolder is so named (its errors then say what
    a folder needs); class folders otherwise."""
    data_dir = Path(data_dir)
    named = [n for n, is_dir in _entries(data_dir, Counter())
             if is_dir and (normalise_kind(n) or n.lower() in SPLIT_FOLDERS)]
    layout = "dfmm" if (data_dir / "images").is_dir() or not named else "class folders"
    return layout, named


def _is_dir(entry) -> bool:
    try:
        return entry.is_dir()  # follows links
    except OSError:
        return False


def _entries(folder: Path, skipped: Counter) -> list[tuple[str, bool]]:
    """(name, is a folder) of the entries of `folder` in name order, hidden ones (.name)
    left out; an unreadable folder and a name that is not UTF-8 are counted."""
    try:
        with os.scandir(folder) as it:
            found = [(e.name, _is_dir(e)) for e in it if not e.name.startswith(".")]
    except (OSError, ValueError):  # ValueError: a path the file system cannot encode
        skipped["unreadable folder"] += 1
        return []
    out = []
    for name, is_dir in sorted(found):
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            skipped["file or folder name that is not UTF-8"] += 1
            continue
        out.append((name, is_dir))
    return out


def _is_photo(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def _folder_id(path: Path):
    try:
        st = path.stat()
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def walk_photos(data_dir: Path, folder: str, skipped: Counter) -> list[str]:
    """Keys ("folder/sub/abc.jpg", paths under data_dir) of the photos under `folder`,
    by file suffix, at most MAX_FOLDER_DEPTH folders deep. Linked folders are followed
    unless they lead back into the data folder (read in their own place) or above the
    folder being read (a loop), and each folder is read once; those links are counted,
    as are files that are not photos (the .txt captions aside)."""
    root = os.path.realpath(data_dir)
    photos, seen, todo = [], set(), [(folder, 0)]
    while todo:
        rel, depth = todo.pop()
        here = os.path.realpath(data_dir / rel)
        if here in seen:
            skipped["folder reached twice through links"] += 1
            continue
        seen.add(here)
        for name, is_dir in _entries(data_dir / rel, skipped):
            key = f"{rel}/{name}"
            if not is_dir:
                if _is_photo(name):
                    photos.append(key)
                elif not name.lower().endswith(".txt"):
                    skipped["not an image file"] += 1
            elif depth >= MAX_FOLDER_DEPTH:
                skipped[f"folder nested over {MAX_FOLDER_DEPTH} deep"] += 1
            elif os.path.islink(data_dir / key) and (
                    _inside(target := os.path.realpath(data_dir / key), root) or _inside(here, target)):
                skipped["link back into the data folder or above (not followed)"] += 1
            else:
                todo.append((key, depth + 1))
    return sorted(photos)


def class_folders(data_dir: Path, cfg: Config, skipped: Counter) -> list[tuple[str, str]]:
    """(folder under data_dir, split) of every class folder: DIR/<class> (split None:
    decided per photo by identity_split) and DIR/<split>/<class>. The image cache, when it lies in DIR, is left out; photos
    outside a class folder are counted."""
    cache = _folder_id(cfg.resolved_cache_dir())
    root = os.path.realpath(data_dir)

    def folders(rel):
        """The subfolders of rel, but a link to the data folder or above it (a loop)."""
        for name, is_dir in _entries(data_dir / rel, skipped):
            key = f"{rel}/{name}" if rel else name
            if not is_dir:
                skipped["photo outside a class folder"] += _is_photo(name)
            elif _inside(root, os.path.realpath(data_dir / key)):
                skipped["link back into the data folder or above (not followed)"] += 1
            else:
                yield name, key

    out = []
    for name, key in folders(""):
        if name == "cache" or _folder_id(data_dir / name) == cache:
            continue
        split = SPLIT_FOLDERS.get(name.lower())
        out += [(key, None)] if split is None else [(sub, split) for _, sub in folders(key)]
    return out


def folder_caption(kind: str, text: str) -> str:
    """The source caption of a class-folder photo for derive_captions: its own
    sentences, led by one naming its kind ("A dress.") when none of them does, so that
    derive_captions keeps them as that garment's. "" without sentences."""
    if not text or garment_sentences(text, kind):
        return text
    noun = KIND_NOUN[kind]
    lead = f"A pair of {noun}." if kind in ("pants", "leggings", "shoes") else f"A {noun}."
    return f"{lead} {text}"


def list_class_folder_jobs(data_dir: Path, cfg: Config):
    """list_jobs for a class-folder tree: (jobs, skipped counter, the photos' own
    captions by key, from captions.json and the .txt files)."""
    skipped = Counter()
    given, bad = read_captions(data_dir) if (data_dir / "captions.json").is_file() else ({}, 0)
    if bad:
        skipped[BAD_CAPTION] += bad
    jobs, captions, used = [], {}, set()
    for folder, split in class_folders(data_dir, cfg, skipped):
        name = folder.rsplit("/", 1)[-1]
        kind = normalise_kind(name)
        if kind is None:  # photos of a kind not kept; the junk in it is not counted
            n = len(walk_photos(data_dir, folder, Counter()))
            if n:
                skipped[SKIPPED_FOLDER + name] += n
            continue
        keys = walk_photos(data_dir, folder, skipped)
        if not keys:
            skipped["empty class folder"] += 1
        for key in keys:
            photo = file_stamp(data_dir / key)
            if photo is None:  # a dangling link, a folder, no permission
                skipped["unreadable image"] += 1
                continue
            base = key.rsplit("/", 1)[-1]
            own = [given.get(key, given.get(base, ""))]
            used.update((key, base))
            try:
                own.append(read_caption_txt(data_dir / (os.path.splitext(key)[0] + ".txt")) or "")
            except (OSError, ValueError):
                skipped["unreadable caption .txt"] += 1
            text = " ".join(t for t in own if t)
            if text:
                captions[key] = text
            jobs.append(Job(key, kind, folder_caption(kind, text), split or identity_split(key),
                            False, {}, (photo, None), root="", parsing=False))
    skipped["image file missing"] += len(set(given) - used)
    skipped = +skipped  # drop the reasons counted zero times
    if not jobs:
        folders = ", ".join(f"{k[len(SKIPPED_FOLDER):]} {v}" for k, v in sorted(skipped.items())
                            if k.startswith(SKIPPED_FOLDER))
        raise UserError(f"no photos of a kept kind in the class folders of {data_dir}"
                        + (f" (skipped folders: {folders})" if folders else "")
                        + "; the kinds are " + ", ".join(KINDS) + " and their synonyms")
    return jobs, skipped, captions


# --------------------------------------------------------------------------- decoding

def _square_box(box, margin: float):
    """Expand (x0, y0, x1, y1) by margin and make it square around its centre."""
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2


def _crop_square(img: Image.Image, box, size: int) -> np.ndarray:
    """Crop `box` (may reach outside the photo) padded with the border colour, resized."""
    arr = np.asarray(img)
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    fill = tuple(int(v) for v in np.median(border, axis=0))
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    side = max(x1 - x0, y1 - y0, 1)
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(img.crop((max(x0, 0), max(y0, 0), min(x1, img.width), min(y1, img.height))),
                 (max(0, -x0), max(0, -y0)))
    return np.asarray(canvas.resize((size, size), Image.BICUBIC, reducing_gap=2.0))


def _region_box(segm: np.ndarray | None, label: int, min_frac: float):
    if segm is None:
        return None
    ys, xs = np.nonzero(segm == label)
    if len(ys) < min_frac * segm.size:
        return None
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


_SWAPPED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that turn the photo by 90 degrees


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1))
    except Exception:  # a damaged EXIF block: read the pixels as stored
        return 1


def _upright_size(path: Path) -> tuple:
    """(width, height) of the photo as it is shown (its EXIF orientation applied)."""
    with Image.open(path) as img:
        w, h = img.size
        return (h, w) if _orientation(img) in _SWAPPED_ORIENTATIONS else (w, h)


def _open_rgb(path: Path, size: int) -> Image.Image:
    """The photo upright (EXIF orientation applied) in RGB, transparency on white."""
    img = Image.open(path)
    if img.format == "JPEG":
        img.draft("RGB", (size * 2, size * 2))  # decode at a reduced scale: much faster
    if _orientation(img) != 1:
        img = ImageOps.exif_transpose(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, img)
    img = img.convert("RGB")
    img.load()
    return img


def _process(args):
    """Decode one photo into its samples. Returns (samples, [reasons to count])."""
    data_dir, job, size, labels, min_frac, margin = args
    try:
        path = photo_path(data_dir, job)
        if path.stat().st_size == 0:
            return [], ["unreadable image"]
        orig = _upright_size(path)
        img = _open_rgb(path, size)
        # colours are measured on one fixed decoding of the photo, whatever the cache
        # size, so every cache resolution derives the same captions
        probe = _open_rgb(path, COLOUR_PROBE_SIZE) if size != COLOUR_PROBE_SIZE else img
    except Exception:  # truncated, not an image, decompression bomb, a dangling link, ...
        return [], ["unreadable image"]
    segm = _read_segm(segm_path(data_dir, job.image), orig) if job.parsing else None
    notes = []
    if segm is False:
        segm = None
        notes.append("segm map unreadable or of another size (photo kept uncropped)")
    probe_px = np.asarray(probe)

    def scaled(box, im):
        if box is None:
            return None
        fx, fy = im.width / orig[0], im.height / orig[1]
        return box[0] * fx, box[1] * fy, box[2] * fx, box[3] * fy

    def measured_colour(label, box, margin_):
        """Name the colour of the parsing region `label`, else of the crop's garment pixels."""
        if segm is not None and box is not None:
            mask = np.asarray(Image.fromarray((segm == label).astype(np.uint8) * 255)
                              .resize(probe.size, Image.NEAREST)) > 0
            if mask.sum() >= 4:
                return name_colour(probe_px[mask])
        b = scaled(box, probe)
        sq = _square_box(b, margin_) if b is not None else _square_box((0, 0, probe.width, probe.height), 0)
        return name_colour(garment_pixels(_crop_square(probe, sq, COLOUR_PROBE_SIZE)))

    out = []
    if job.kind is not None:
        region = _region_box(segm, labels[job.kind], min_frac)
        box = scaled(region, img)
        box = _square_box(box, margin) if box is not None else _square_box((0, 0, img.width, img.height), 0)
        colour = measured_colour(labels[job.kind], region, margin)
        out.append((job.kind, derive_captions(job.kind, job.caption, colour, job.texture),
                    _crop_square(img, box, size)))
    if job.shoes:
        region = _region_box(segm, labels["shoes"], min_frac)
        if region is not None:
            colour = measured_colour(labels["shoes"], region, margin * 2)
            out.append(("shoes", derive_captions("shoes", job.caption, colour),
                        _crop_square(img, _square_box(scaled(region, img), margin * 2), size)))
    return out, notes


def _read_segm(path: Path, size: tuple):
    """The parsing map at `path` as a (H, W) array of label ids; None when there is no
    map; False when it cannot be read or is not of the photo's (upright) `size`."""
    if not path.is_file():
        return None
    try:
        with Image.open(path) as s:
            if s.size != tuple(size):
                return False
            return np.asarray(s.convert("L") if s.mode not in ("L", "P") else s)
    except Exception:  # not an image, truncated, decompression bomb, ...
        return False


def _cache_key(data_dir, jobs, cfg: Config, size: int) -> str:
    """A hash of everything the cached samples depend on: settings, vocabulary, and per
    photo its caption, kind, split, texture labels and the size and modification time
    of the photo and of its parsing map."""
    h = hashlib.sha256()
    # the derived captions depend on the vocabulary (colour shades, pattern names) too
    h.update(json.dumps([CACHE_VERSION, size, cfg.min_region_frac, cfg.crop_margin,
                         cfg.category_map, cfg.parsing_labels, COLOURS, COLOUR_ALIASES, PATTERNS,
                         PATTERN_ALIASES, FABRICS, COLOUR_PROBE_SIZE], sort_keys=True).encode())
    for j in jobs:
        h.update(f"{j.image}|{j.kind}|{j.caption}|{j.split}|{j.shoes}|{j.stamp}|"
                 f"{json.dumps(j.texture, sort_keys=True)}\n".encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def _cached_index(idx_path: Path, npy: Path, key: str, size: int):
    """The index at idx_path when it belongs to `key` and its image array is whole, else
    None (missing, stale, damaged or written by another version: it is rebuilt)."""
    if not (idx_path.is_file() and npy.is_file()):
        return None
    try:
        index = read_json(idx_path, "image cache index")
        if not isinstance(index, dict) or index.get("key") != key:
            return None
        n = index["n"]
        fields = ("kinds", "captions", "sources", "colours", "patterns", "images", "splits")
        if not all(isinstance(index[f], list) and len(index[f]) == n for f in fields):
            return None
        if np.load(npy, mmap_mode="r").shape != (n, size, size, 3):
            return None
    except (UserError, KeyError, TypeError, ValueError, OSError):
        return None
    return index


def prepare(cfg: Config, size: int, progress: bool = True, workers: int | None = None) -> dict:
    """Build (once) the uint8 image cache of `size` for cfg's data; return its index.

    Index: {"key", "size", "n", "images_path": str, "skipped": {reason: count},
    "notes": {note: count}, and per sample "kinds", "captions" (its derived captions,
    the long one first), "sources" (the photo's caption), "colours", "patterns" (None
    when unknown), "images", "splits"}, and "caption_file": captions.json as read (for
    the embeddings cache's check; not stored in the cache)."""
    data_dir = cfg.resolved_data_dir()
    jobs, skipped, captions = list_jobs(data_dir, cfg)
    cache_dir = cfg.resolved_cache_dir()
    npy, idx_path = cache_dir / f"images_{size}.npy", cache_dir / f"index_{size}.json"
    key = _cache_key(data_dir, jobs, cfg, size)
    index = _cached_index(idx_path, npy, key, size)
    if index is not None:
        # the photos skipped before decoding (missing, ...) are counted afresh: captions
        # naming missing images do not change the cached samples, only this count
        index["skipped"] = dict(skipped + Counter(index.get("decode_skipped", {})))
        index["images_path"], index["caption_file"] = str(npy), captions
        return index
    if progress and cfg.cache_dir is None and cache_dir.parent != data_dir:
        print(f"note: {data_dir} is read-only; its caches go to {cache_dir}")
    workers = workers or min(4, os.cpu_count() or 1)
    listed_skipped = Counter(skipped)
    tasks = [(str(data_dir), j, size, cfg.parsing_labels, cfg.min_region_frac, cfg.crop_margin)
             for j in jobs]
    meta = {k: [] for k in ("kinds", "captions", "sources", "colours", "patterns", "images",
                            "splits")}
    notes = Counter()
    n_alloc = max(1, len(jobs) + sum(j.shoes for j in jobs))
    n, pool = 0, None
    with atomic_path(npy, "write the image cache", CACHE_FIX) as tmp:
        arr = _open_cache(tmp, n_alloc, size)
        try:
            if workers > 1 and len(tasks) > 64:
                pool = get_context("spawn").Pool(workers)
                results = pool.imap(_process, tasks, chunksize=16)
            else:
                results = map(_process, tasks)
            bar = tqdm(results, total=len(tasks), desc=f"caching {size}px images",
                       disable=not progress, unit="img")
            for job, (samples, reasons) in zip(jobs, bar):
                for reason in reasons:
                    (notes if reason.startswith("segm") else skipped)[reason] += 1
                for kind, derived, pixels in samples:
                    arr[n] = pixels
                    for k, v in zip(meta, (kind, derived["captions"], job.caption,
                                           derived["colour"], derived["pattern"], job.image,
                                           job.split)):
                        meta[k].append(v)
                    n += 1
        except BaseException:
            if pool is not None:
                pool.terminate()
            raise
        if pool is not None:
            pool.close()
            pool.join()
        arr.flush()
        del arr
        if n == 0:
            _atomic_write(tmp, lambda f: np.save(f, np.zeros((0, size, size, 3), np.uint8)),
                          "write the image cache", CACHE_FIX)
        elif n < n_alloc:  # keep only the rows filled, copied in chunks
            src = np.load(tmp, mmap_mode="r")
            with atomic_path(tmp, "write the image cache", CACHE_FIX) as tmp2:
                dst = _open_cache(tmp2, n, size)
                for s in range(0, n, 1024):
                    dst[s:s + 1024] = src[s:min(s + 1024, n)]
                dst.flush()
                del src, dst
    decode_skipped = skipped - listed_skipped
    index = {"key": key, "size": size, "n": n, **meta, "skipped": dict(skipped),
             "decode_skipped": dict(decode_skipped), "notes": dict(notes)}
    _atomic_write(idx_path, lambda f: f.write(json.dumps(index).encode()), fix=CACHE_FIX)
    index["images_path"], index["caption_file"] = str(npy), captions
    return index


CACHE_FIX = "set --cache_dir to a writable folder with room"


def _open_cache(path, n: int, size: int) -> np.memmap:
    """A writable (n, size, size, 3) uint8 .npy memory map at `path`, its disk space
    reserved at once: a disk that lacks room is an OSError here, not a crash at the
    first image that does not fit."""
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
    reserve(path, arr.offset + arr.nbytes)
    return arr


# ------------------------------------------------------------------------- training data

def augment(x: torch.Tensor, generator: torch.Generator | None = None,
            max_shift: float = 0.06, max_zoom: float = 0.08) -> torch.Tensor:
    """Random horizontal flip and a small shift/zoom for a whole batch, on tensors. The
    random draws come from `generator` on its own device (x's device without one)."""
    b = x.size(0)
    gdev = generator.device if generator is not None else x.device
    r = torch.rand(b, 4, generator=generator, device=gdev).to(x.device)
    flip = torch.where(r[:, 0] < 0.5, 1.0, -1.0)
    zoom = 1 - r[:, 1] * max_zoom
    shift = (r[:, 2:] * 2 - 1) * max_shift
    zero = torch.zeros_like(zoom)
    theta = torch.stack([zoom * flip, zero, shift[:, 0], zero, zoom, shift[:, 1]], 1).view(b, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def attribute_ids(kinds, colours, patterns) -> torch.Tensor:
    """(N, 3) long: each sample's class index in KINDS, COLOURS and PATTERNS; -100 (the
    ignore_index of cross-entropy) for a colour or pattern that is None or unknown."""
    def index(name, vocabulary):
        return vocabulary.index(name) if name in vocabulary else -100
    return torch.tensor([[KINDS.index(k), index(c, list(COLOURS)), index(p, PATTERNS)]
                         for k, c, p in zip(kinds, colours, patterns)],
                        dtype=torch.long).reshape(-1, 3)


class FashionData:
    """Cached images + caption embeddings, batched on tensors.

    `images`: uint8 (N, H, W, 3) (a read-only memory map of the cache);
    `captions[i]`: sample i's derived captions (the long one first);
    `emb`: float32 (N, D) embedding of each sample's long caption;
    `text_emb`: float32 (T, D) embeddings of every caption of the kept samples, sample
    i's at rows text_start[i] .. text_start[i] + text_count[i] - 1;
    `kinds`, `colours`, `patterns`: each sample's attributes."""

    def __init__(self, index: dict, text_emb: np.ndarray, split: str | None = "train",
                 max_samples: int = 0):
        images = np.load(index["images_path"], mmap_mode="r")
        keep = np.arange(index["n"])
        if split is not None:
            splits = np.array(index["splits"]) if index["n"] else np.array([], dtype=str)
            sel = keep[splits != "validation"] if split == "train" else keep[splits == split]
            keep = sel
        if max_samples and max_samples < len(keep):  # a fixed spread over the whole set
            pick = np.random.default_rng(0).choice(len(keep), max_samples, replace=False)
            keep = keep[np.sort(pick)]
        if len(keep) == 0 and split == "train" and index["n"]:
            raise UserError(f"all {index['n']} samples are held out (split validation): "
                            "training needs photos outside validation/, val/ and test/ "
                            "(or labels.csv rows of another split)")
        if len(keep) == 0:
            raise UserError("no usable images of the five garment kinds were found "
                            f"(skipped: {index.get('skipped') or 'none'})")
        self.rows = keep  # sample i lives at row rows[i] of the cache
        self.images = images
        self.kinds = [index["kinds"][i] for i in keep]
        self.captions = [index["captions"][i] for i in keep]
        self.colours = [index["colours"][i] for i in keep]
        self.patterns = [index["patterns"][i] for i in keep]
        counts_all = np.array([len(c) for c in index["captions"]], dtype=np.int64)
        starts_all = np.concatenate([[0], np.cumsum(counts_all)[:-1]]).astype(np.int64)
        text_rows = np.concatenate([np.arange(starts_all[i], starts_all[i] + counts_all[i])
                                    for i in keep])
        self.text_emb = torch.from_numpy(np.ascontiguousarray(text_emb[text_rows], dtype=np.float32))
        self.text_count = torch.from_numpy(counts_all[keep])
        self.text_start = torch.cumsum(self.text_count, 0) - self.text_count
        self.emb = self.text_emb[self.text_start]
        self.labels = attribute_ids(self.kinds, self.colours, self.patterns)
        # samples ordered by (kind, colour, pattern): each attribute group is one block
        # inside its kind's block (torch.unique sorts rows, kind first); see wrong_indices
        attr = torch.unique(self.labels, dim=0, return_inverse=True)[1]
        group_size = torch.bincount(attr)
        kind_size = torch.bincount(self.labels[:, 0], minlength=len(KINDS))
        self._group_order = torch.argsort(attr, stable=True)
        self._group_start = (torch.cumsum(group_size, 0) - group_size)[attr]
        self._group_size = group_size[attr]
        self._kind_start = (torch.cumsum(kind_size, 0) - kind_size)[self.labels[:, 0]]
        self._kind_size = kind_size[self.labels[:, 0]]
        self.size = index["size"]
        self.device, self.device_images = torch.device("cpu"), None

    def __len__(self):
        return len(self.kinds)

    def to(self, device) -> "FashionData":
        """Hold what a training batch needs on a CUDA `device`: caption embeddings,
        attribute tables and, when it fits in half the free device memory, the uint8
        image cache (DFMM at 256 px is about 8.7 GB). Batches are then assembled there
        without a host round trip. A no-op for the CPU. Returns self."""
        device = torch.device(device)
        if device.type != "cuda":
            return self
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        shape = (len(self.rows),) + self.images.shape[1:]
        nbytes = int(np.prod(shape))
        if nbytes < torch.cuda.mem_get_info(device)[0] // 2:
            held = torch.empty(shape, dtype=torch.uint8, device=device)
            for s in range(0, len(self.rows), 1024):  # bounded host memory
                chunk = np.ascontiguousarray(self.images[self.rows[s:s + 1024]])
                held[s:s + len(chunk)] = torch.from_numpy(chunk).to(device)
            self.device_images = held
        else:
            print(f"the image cache ({nbytes / 1e9:.1f} GB) does not fit in half the free "
                  f"memory of {device}: batches are read from the host")
        for name in ("text_emb", "text_count", "text_start", "emb", "labels", "_group_order",
                     "_group_start", "_group_size", "_kind_start", "_kind_size"):
            setattr(self, name, getattr(self, name).to(device))
        self.device = device
        return self

    def _idx(self, idx) -> torch.Tensor:
        """Sample indices as a long tensor on the data's device."""
        if torch.is_tensor(idx):
            return idx.to(self.device)
        return torch.as_tensor(np.asarray(idx, dtype=np.int64), device=self.device)

    def pixels(self, idx, device=None) -> torch.Tensor:
        """float (B, 3, H, W) in [-1, 1] for sample indices `idx`, on `device` (default:
        the data's). From the device-held cache when there is one; otherwise uint8 travels
        from the memory map to the device (pinned, non-blocking on CUDA) and the float
        conversion happens there."""
        device = torch.device(device) if device is not None else self.device
        if self.device_images is not None:
            x = self.device_images[self._idx(idx)].to(device)
        else:
            rows = self.rows[np.asarray(idx.cpu() if torch.is_tensor(idx) else idx)]
            order = np.argsort(rows)  # read the memory map in file order, then restore
            x = np.empty((len(rows),) + self.images.shape[1:], np.uint8)
            x[order] = self.images[rows[order]]
            x = torch.from_numpy(x)
            if device.type == "cuda":
                x = x.pin_memory().to(device, non_blocking=True)
        return x.permute(0, 3, 1, 2).float().div_(127.5).sub_(1)

    def wrong_indices(self, idx, generator=None, same_kind: float = 0.5) -> torch.Tensor:
        """For each i in idx, a j that differs from i in kind, colour or pattern, drawn
        uniformly from those samples (two random numbers per i, no loop, no branch: no
        device synchronisation).

        A share `same_kind` of the j are drawn from i's own garment kind, so the
        discriminator also learns to reject a dress of the wrong colour or pattern, not
        only the wrong kind of garment. The samples are ordered by attribute group, kind
        first, so i's group is a block inside its kind's block and "every sample but
        that block" is a range with a hole: a uniform draw below the range's size
        skips the hole. With one group only, no such j exists and i's group is used."""
        idx = self._idx(idx)
        u = torch.rand((2,) + idx.shape, generator=generator, device=self.device)
        g0, gn = self._group_start[idx], self._group_size[idx]
        k0, kn = self._kind_start[idx], self._kind_size[idx]
        in_kind = (u[0] < same_kind) & (kn > gn)
        base = torch.where(in_kind, k0, torch.zeros_like(k0))
        span = torch.where(in_kind, kn, torch.full_like(kn, len(self))) - gn
        pos = base + (u[1] * span).long()
        pos = pos + gn * (pos >= g0)
        return self._group_order[pos.clamp_(max=len(self) - 1)]

    def caption_emb(self, idx, generator=None) -> torch.Tensor:
        """(B, D): for each sample in idx, the embedding of one of its captions, drawn
        uniformly (as StackGAN draws one of a CUB image's ten captions)."""
        idx = self._idx(idx)
        r = torch.rand(idx.shape, generator=generator, device=self.device)
        pick = (r * self.text_count[idx]).long()
        return self.text_emb[self.text_start[idx] + pick]

    def batches(self, batch_size: int, generator=None, rank: int = 0, world: int = 1):
        """One epoch of shuffled index batches (drop_last, long tensors on the data's
        device), split across `world` ranks. `generator` is a CPU generator."""
        perm = torch.randperm(len(self), generator=generator).to(self.device)
        per = batch_size * world
        for s in range(0, len(perm) - per + 1, per):
            yield perm[s + rank * batch_size: s + (rank + 1) * batch_size]

    def batch(self, idx, cfg: Config, generator=None, device=None):
        """(real images, wrong images, text embeddings, attribute labels (B, 3)) for
        sample indices `idx`: each sample's text is one of its captions, drawn at random.
        Random draws come from `generator` on the data's device."""
        idx = self._idx(idx)
        wrong = self.wrong_indices(idx, generator, cfg.wrong_same_kind)
        # one gather and one augmentation for the real and the wrong images
        both = augment(self.pixels(torch.cat([idx, wrong]), device), generator)
        real, mismatched = both.chunk(2)
        emb = self.caption_emb(idx, generator)
        return real, mismatched, emb.to(real.device), self.labels[idx].to(real.device)


def caption_texts(index: dict) -> list[str]:
    """Every derived caption of a prepare() index, sample by sample (what is embedded)."""
    return [t for caps in index["captions"] for t in caps]


def show_samples(index: dict, n: int) -> str:
    """A readable listing of `n` samples spread evenly over the index: kind, measured
    attributes, the photo's caption and the captions derived from it."""
    total = index["n"]
    picks = np.unique(np.linspace(0, total - 1, min(n, total)).round().astype(int)) if total else []
    lines = []
    for i in picks:
        lines.append(f"[{i}] {index['images'][i]}: {index['kinds'][i]}, colour "
                     f"{index['colours'][i]}, pattern {index['patterns'][i] or '-'}")
        lines.append(f"    source:  {index['sources'][i]}")
        for c in index["captions"][i]:
            lines.append(f"    derived: {c}")
    return "\n".join(lines)


def describe_index(index: dict, layout: str) -> str:
    """What `python datasets.py` prints: the layout read, the samples per kind, how many
    are held out, the folders and files skipped."""
    counts = Counter(index["kinds"])
    held = index["splits"].count("validation")
    lines = ["layout: " + ("class folders (DIR/<kind>/*.jpg, DIR/<split>/<kind>/*.jpg)"
                           if layout == "class folders" else "DFMM (images/ + captions.json)")]
    lines += [f"{kind}: {counts.get(kind, 0)}" for kind in KINDS]
    per_kind = Counter(k for k, s in zip(index["kinds"], index["splits"]) if s == "validation")
    lines.append(f"held out: {held} of {index['n']} (split validation: never trained on, "
                 "scored by evaluate.py): " + ", ".join(f"{per_kind[k]} {k}" for k in KINDS
                                                        if per_kind[k]) if held else
                 f"held out: 0 of {index['n']} (no validation split: evaluate.py holds out "
                 "10% of each kind)")
    skipped = dict(index["skipped"])
    folders = {k[len(SKIPPED_FOLDER):]: skipped.pop(k) for k in sorted(skipped, key=str.lower)
               if k.startswith(SKIPPED_FOLDER)}
    if folders:
        lines.append("skipped folders: " + ", ".join(f"{k} {v}" for k, v in folders.items()))
    lines.append(f"skipped: {sum(skipped.values())}" +
                 (" (" + ", ".join(f"{v} {k}" for k, v in sorted(skipped.items())) + ")"
                  if skipped else ""))
    return "\n".join(lines)


def build_parser() -> CliParser:
    p = CliParser(description="Count the garment kinds of a DFMM or class-folder tree, show "
                              "how many photos are held out, and build its image cache.")
    p.add_argument("--data_dir", required=True, type=flag_type(TEXT))
    p.add_argument("--size", type=flag_type(power_of_two(8, 2048)), default=64,
                   help="cache resolution to build (default 64)")
    p.add_argument("--cache_dir", type=flag_type(PATH), default=None)
    p.add_argument("--show", type=flag_type(whole(0, 100_000)), default=0, metavar="N",
                   help="also print N samples with their source caption and derived captions")
    return p


def main(argv=None) -> int:
    def job():
        args = build_parser().parse_args(argv)
        cfg = Config(data_dir=args.data_dir, cache_dir=args.cache_dir).validate()
        index = prepare(cfg, args.size)
        print(describe_index(index, folder_layout(cfg.resolved_data_dir())[0]))
        for k, v in sorted(index.get("notes", {}).items()):
            print(f"note: {v} {k}")
        if args.show:
            print(show_samples(index, args.show))

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
