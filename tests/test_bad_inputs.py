"""Property-based tests: whatever users put in their data folder or on the command line,
the loaders and the CLI answer with a clear error or a counted skip, never a traceback."""
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st
from PIL import Image

import datasets as ds
import main
import sample
from captions import FABRICS, PATTERNS
from config import Config
from utils import UserError, load_checkpoint

PATTERNS_AND_FABRICS = set(PATTERNS) | set(FABRICS)

SETTINGS = settings(max_examples=15, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                           | st.text(max_size=20),
                           lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                           max_leaves=8)


def fresh(tmp_path, name) -> Path:
    root = tmp_path / name
    if root.exists():
        shutil.rmtree(root)
    (root / "images").mkdir(parents=True)
    return root


def jpeg_bytes(seed=0, size=(30, 44)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


@SETTINGS
@given(payload=st.one_of(json_values, st.binary(max_size=64).map(lambda b: b"\x00RAW" + b)))
def test_any_captions_json_is_an_error_or_a_count(tmp_path, payload):
    root = fresh(tmp_path, "cap")
    (root / "images" / "WOMEN-Dresses-id_00000001-01_1_front.jpg").write_bytes(jpeg_bytes())
    if isinstance(payload, bytes):
        (root / "captions.json").write_bytes(payload)
    else:
        (root / "captions.json").write_text(json.dumps(payload))
    try:
        index = ds.prepare(Config(data_dir=str(root)), 16, progress=False)
    except UserError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert index["n"] == len(index["kinds"]) <= 1


@SETTINGS
@given(captions=st.dictionaries(st.text(max_size=30), st.one_of(st.text(max_size=40), st.integers(),
                                                                 st.none(), st.lists(st.text())),
                                max_size=6))
def test_captions_of_any_type_or_naming_missing_images(tmp_path, captions):
    root = fresh(tmp_path, "names")
    good = "MEN-Tees_Tanks-id_00000002-01_1_front.jpg"
    (root / "images" / good).write_bytes(jpeg_bytes(1))
    captions = dict(captions, **{good: "The gentleman wears a blue T-shirt."})
    (root / "captions.json").write_text(json.dumps(captions))
    index = ds.prepare(Config(data_dir=str(root)), 16, progress=False)
    assert index["kinds"].count("t-shirt") == 1
    others = {k: v for k, v in captions.items() if k != good}
    bad_text = sum(1 for v in others.values() if not (isinstance(v, str) and v.strip()))
    missing = sum(1 for k, v in others.items() if isinstance(v, str) and v.strip())
    assert index["skipped"].get("empty or non-text caption", 0) == bad_text
    assert index["skipped"].get("image file missing", 0) == missing


def image_variants():
    base = Image.fromarray(np.random.default_rng(3).integers(0, 255, (44, 30, 3), dtype=np.uint8))
    good = jpeg_bytes(2)

    def enc(im, fmt, **kw):
        buf = io.BytesIO()
        im.save(buf, fmt, **kw)
        return buf.getvalue()

    return st.one_of(
        st.binary(max_size=200),                                            # not an image
        st.integers(0, len(good) - 1).map(lambda n: good[:n]),               # truncated
        st.sampled_from([enc(base.convert("L"), "JPEG"), enc(base.convert("CMYK"), "JPEG"),
                         enc(base.convert("P"), "PNG"), enc(base.convert("RGBA"), "PNG"),
                         enc(base.convert("LA"), "PNG"), enc(base.convert("I;16"), "PNG"),
                         enc(base, "GIF"), enc(base, "BMP")]),
        st.tuples(st.integers(0, len(good) - 1), st.integers(0, 255)).map(   # a flipped byte
            lambda t: good[:t[0]] + bytes([t[1]]) + good[t[0] + 1:]))


@SETTINGS
@given(blob=image_variants())
def test_any_image_bytes_are_decoded_or_skipped(tmp_path, blob):
    root = fresh(tmp_path, "img")
    name = "WOMEN-Leggings-id_00000003-01_1_front.jpg"
    (root / "images" / name).write_bytes(blob)
    (root / "captions.json").write_text(json.dumps({name: "Black leggings."}))
    index = ds.prepare(Config(data_dir=str(root)), 16, progress=False)
    assert index["n"] + index["skipped"].get("unreadable image", 0) == 1
    if index["n"]:
        assert np.load(index["images_path"]).shape == (1, 16, 16, 3)


@SETTINGS
@given(size=st.tuples(st.integers(1, 80), st.integers(1, 80)),
       mode=st.sampled_from(["L", "P", "RGB", "I;16"]), label=st.integers(0, 255))
def test_segm_maps_of_any_size_or_mode(tmp_path, size, mode, label):
    root = fresh(tmp_path, "segm")
    (root / "segm").mkdir()
    name = "WOMEN-Dresses-id_00000004-01_1_front.jpg"
    (root / "images" / name).write_bytes(jpeg_bytes(4))
    Image.new(mode, size, label if mode != "RGB" else (label,) * 3).save(
        root / "segm" / name.replace(".jpg", "_segm.png"))
    (root / "captions.json").write_text(json.dumps({name: "A red dress."}))
    index = ds.prepare(Config(data_dir=str(root)), 16, progress=False)
    assert index["kinds"].count("dress") == 1  # the photo is never lost over its parsing map
    if size != (30, 44):
        assert sum(index["notes"].values()) == 1


def test_huge_image_is_skipped(tmp_path, monkeypatch):
    root = fresh(tmp_path, "huge")
    name = "MEN-Pants-id_00000005-01_1_front.jpg"
    (root / "images" / name).write_bytes(jpeg_bytes(5, size=(400, 400)))
    (root / "captions.json").write_text(json.dumps({name: "Navy pants."}))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100 // 2)  # 400x400 > 2x the limit
    index = ds.prepare(Config(data_dir=str(root)), 16, progress=False)
    assert index["n"] == 0 and index["skipped"] == {"unreadable image": 1}


@SETTINGS
@given(prompt=st.text(max_size=3000))
def test_any_prompt_is_accepted_or_refused_clearly(prompt):
    try:
        out = sample.read_prompts([prompt], None)
    except UserError as e:
        assert not prompt.split() and "empty" in str(e)
        return
    assert out == [" ".join(prompt.split())] and out[0]


@pytest.mark.parametrize("argv,msg", [
    (["--train", "maybe"], "expected y or n"),
    (["--stage", "3"], "invalid choice"),
    (["--epochs", "ten"], "must be a whole number"),
    (["--wandb", "sometimes"], "invalid choice"),
])
def test_bad_flags_are_usage_errors(argv, msg, capsys):
    assert main.main(argv) == 2
    err = capsys.readouterr().err
    assert msg in err and err.startswith("error: ") and err.count("\n") == 1


def test_prompts_file_problems(tmp_path, capsys):
    assert main.main(["--train", "n", "--prompts_file", str(tmp_path / "none.txt")]) == 2
    assert "cannot read --prompts_file" in capsys.readouterr().err
    bad = tmp_path / "bin.txt"
    bad.write_bytes(b"\xff\xfe\x00bad")
    assert main.main(["--train", "n", "--prompts_file", str(bad)]) == 2
    assert "not UTF-8" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    assert main.main(["--train", "n", "--prompts_file", str(empty)]) == 2
    assert "empty" in capsys.readouterr().err


def test_checkpoint_problems_are_clear(tmp_path, capsys):
    import torch
    for blob, msg in [(b"", "not a readable checkpoint"), (b"PK\x03\x04junk", "not a readable checkpoint")]:
        p = tmp_path / "g.pt"
        p.write_bytes(blob)
        assert main.main(["--train", "n", "--net_g", str(p), "--prompt", "red dress"]) == 2
        assert msg in capsys.readouterr().err
    p = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, p)
    assert main.main(["--train", "n", "--net_g", str(p), "--prompt", "red dress"]) == 2
    assert "not a checkpoint written by this repo" in capsys.readouterr().err

    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))
    p = tmp_path / "evil.pt"
    torch.save({"netG": Evil()}, p)
    assert main.main(["--train", "n", "--net_g", str(p), "--prompt", "red dress"]) == 2
    captured = capsys.readouterr()
    assert "code ran" not in captured.out and "not a readable checkpoint" in captured.err


# ---------------------------------------------------------------- generated file shapes

any_text = st.text(st.characters(codec=None) | st.characters(categories=["Cs"]), max_size=30)
DRESS = "WOMEN-Dresses-id_00000001-01_1_front.jpg"


def encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@SETTINGS
@given(depth=st.integers(1, 200_000), wrap=st.sampled_from(["[", '{"a":']),
       inside=st.booleans())
def test_captions_json_nested_any_depth(tmp_path, depth, wrap, inside):
    """Nesting beyond what the JSON reader can follow is one line, not a RecursionError."""
    root = fresh(tmp_path, "deep")
    (root / "images" / DRESS).write_bytes(jpeg_bytes())
    close = "]" if wrap == "[" else "}"
    nested = wrap * depth + ("1" if wrap != "[" else "") + close * depth
    text = '{"%s": %s}' % (DRESS, nested) if inside else nested
    (root / "captions.json").write_text(text)
    try:
        index = ds.prepare(Config(data_dir=str(root)), 16, progress=False)
    except UserError as e:
        assert "\n" not in str(e) and len(str(e)) < 300
        assert "nested too deeply" in str(e) or depth < 5000
        event("nested too deeply" if "nested too deeply" in str(e) else "refused otherwise")
        return
    assert depth < 5000 and index["n"] == 0  # a shallow object: its entry is not a caption
    event("read, entry counted as unusable")


@SETTINGS
@given(caption=any_text, other=st.dictionaries(any_text, any_text | json_values, max_size=4),
       bom=st.booleans())
def test_captions_with_any_characters(tmp_path, caption, other, bom):
    """Lone surrogates ("\\ud800", valid JSON) and any other characters in names and
    captions: the photo is kept (when its caption has text) and every caption that
    reaches the cache, its key and the embedding cache's hash is encodable text."""
    from get_embeddings import captions_hash
    root = fresh(tmp_path, "chars")
    (root / "images" / DRESS).write_bytes(jpeg_bytes())
    captions = {**{k: v for k, v in other.items() if k != DRESS}, DRESS: caption}
    text = json.dumps(captions)  # ensure_ascii: \\udXXX escapes
    (root / "captions.json").write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    read, bad = ds.read_captions(root)
    try:
        index = ds.prepare(Config(data_dir=str(root)), 16, progress=False)
    except UserError as e:  # no caption names a photo that is there
        assert not caption.strip() and "\n" not in str(e)
        return
    assert all(encodable(k) and encodable(v) for k, v in read.items())
    captions_hash(read)
    assert index["kinds"].count("dress") == (1 if caption.strip() else 0)
    assert all(encodable(t) for t in ds.caption_texts(index))
    event("surrogate" if not encodable(caption) else "plain")


def test_caption_with_a_lone_surrogate_reaches_the_encoder(tmp_path):
    from get_embeddings import lookup
    root = fresh(tmp_path, "sur")
    (root / "images" / DRESS).write_bytes(jpeg_bytes())
    (root / "captions.json").write_text('{"%s": "A red dress \\ud800 with lace."}' % DRESS)
    cfg = Config(data_dir=str(root))
    index = ds.prepare(cfg, 16, progress=False)
    texts = ds.caption_texts(index)
    assert "\ufffd" in texts[0]
    emb = lookup(texts, ds.read_captions(root)[0], cfg.resolved_embeddings_path(), progress=False)
    assert emb.shape == (len(texts), 384) and np.isfinite(emb).all()


def make_odd_file(path: Path, kind: str):
    """An entry under images/ that is not a readable regular file."""
    import os
    if kind == "dangling link":
        path.symlink_to(path.parent / "gone.jpg")
    elif kind == "link loop":
        path.symlink_to(path)
    elif kind == "folder":
        path.mkdir()
    elif kind == "fifo":  # opening it for reading would wait forever
        os.mkfifo(path)
    elif kind == "device link":
        path.symlink_to("/dev/zero")
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(jpeg_bytes(7))


@SETTINGS
@given(kinds=st.lists(st.sampled_from(["dangling link", "link loop", "folder", "fifo", "empty",
                                       "device link", "good"]), min_size=1, max_size=6))
def test_images_that_are_not_files(tmp_path, kinds):
    root = fresh(tmp_path, "odd")
    captions = {}
    for i, kind in enumerate(kinds):
        name = f"WOMEN-Dresses-id_{i:08d}-01_1_front.jpg"
        make_odd_file(root / "images" / name, kind)
        captions[name] = "A blue dress."
    (root / "captions.json").write_text(json.dumps(captions))
    index = ds.prepare(Config(data_dir=str(root)), 16, progress=False)
    good = kinds.count("good")
    assert index["n"] == good
    assert index["skipped"] == ({"unreadable image": len(kinds) - good} if good < len(kinds) else {})


@SETTINGS
@given(orientation=st.integers(1, 8), size=st.tuples(st.integers(8, 40), st.integers(8, 40)))
def test_exif_orientation_is_cached_upright(tmp_path, orientation, size):
    """A photo carrying an EXIF orientation is cached as the upright photo saved
    without one (lossless PNGs, so the pixels can be compared exactly)."""
    from PIL import ImageOps
    rng = np.random.default_rng(orientation)
    stored = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    arrays = []
    for name, image, kw in (("tagged", stored, {"exif": exif}),
                            ("upright", ImageOps.exif_transpose(_tagged(stored, exif)), {})):
        root = fresh(tmp_path, name)
        image.save(root / "images" / DRESS, format="PNG", **kw)
        (root / "captions.json").write_text(json.dumps({DRESS: "A dress."}))
        index = ds.prepare(Config(data_dir=str(root)), 16, progress=False)
        arrays.append(np.load(index["images_path"]))
    assert np.array_equal(arrays[0], arrays[1])


def _tagged(image, exif):
    buf = io.BytesIO()
    image.save(buf, format="PNG", exif=exif)
    buf.seek(0)
    return Image.open(buf)


@SETTINGS
@given(blob=st.binary(max_size=300))
def test_segm_map_of_any_bytes(tmp_path, blob):
    root = fresh(tmp_path, "segmbytes")
    (root / "segm").mkdir()
    (root / "images" / DRESS).write_bytes(jpeg_bytes())
    (root / "segm" / DRESS.replace(".jpg", "_segm.png")).write_bytes(blob)
    (root / "captions.json").write_text(json.dumps({DRESS: "A red dress."}))
    index = ds.prepare(Config(data_dir=str(root)), 16, progress=False)
    assert index["kinds"] == ["dress"] and sum(index["notes"].values()) == 1


@SETTINGS
@given(new=st.one_of(st.tuples(st.integers(1, 60), st.integers(1, 90)),
                     st.integers(0, 255)))
def test_a_replaced_segm_map_rebuilds_the_cache(tmp_path, new):
    """A parsing map replaced by one of another size, or of other content, changes the
    cache key: the crops are made again from the new map."""
    import os
    root = fresh(tmp_path, "segmswap")
    (root / "segm").mkdir()
    (root / "images" / DRESS).write_bytes(jpeg_bytes(size=(30, 44)))
    sp = root / "segm" / DRESS.replace(".jpg", "_segm.png")
    region = np.zeros((44, 30), np.uint8)
    region[5:20, 5:20] = 4  # the dress label: a crop around the top-left corner
    Image.fromarray(region).save(sp)
    (root / "captions.json").write_text(json.dumps({DRESS: "A red dress."}))
    cfg = Config(data_dir=str(root))
    first = ds.prepare(cfg, 16, progress=False)
    before = np.load(first["images_path"]).copy()
    if isinstance(new, tuple):
        Image.new("L", new, 4).save(sp)
    else:
        Image.fromarray(np.full((44, 30), new, np.uint8)).save(sp)
    st_ = sp.stat()
    os.utime(sp, ns=(st_.st_atime_ns, st_.st_mtime_ns + 1_000_000))  # a later edit
    second = ds.prepare(cfg, 16, progress=False)
    assert second["key"] != first["key"]
    other_size = isinstance(new, tuple) and new != (30, 44)
    assert sum(second["notes"].values()) == (1 if other_size else 0)
    if other_size or new != 4:
        assert not np.array_equal(np.load(second["images_path"]), before)


@SETTINGS
@given(n_missing=st.integers(0, 60))
def test_captions_naming_missing_images_are_counted_on_every_run(tmp_path, n_missing):
    root = fresh(tmp_path, "missing")
    (root / "images" / DRESS).write_bytes(jpeg_bytes())
    (root / "captions.json").write_text(json.dumps({DRESS: "A red dress."}))
    cfg = Config(data_dir=str(root))
    first = ds.prepare(cfg, 16, progress=False)
    stamp = Path(first["images_path"]).stat().st_mtime_ns
    extra = {f"MEN-Pants-id_{i:08d}-01_1_front.jpg": "Navy pants." for i in range(n_missing)}
    (root / "captions.json").write_text(json.dumps({DRESS: "A red dress.", **extra}))
    second = ds.prepare(cfg, 16, progress=False)
    assert second["skipped"].get("image file missing", 0) == n_missing
    assert Path(second["images_path"]).stat().st_mtime_ns == stamp  # nothing decoded again


@SETTINGS
@given(rows=st.lists(st.tuples(st.text(st.characters(min_codepoint=32, max_codepoint=255,
                                                     exclude_characters=',"\r\n'), min_size=1,
                                       max_size=12).filter(lambda s: s.strip() == s),
                               st.sampled_from(["dress", "Dress", "pants", "shorts", "t-shirt"]),
                               st.sampled_from(["train", "validation", ""])),
                     max_size=5, unique_by=lambda r: r[0]),
       encoding=st.sampled_from(["utf-8", "utf-8-sig", "latin-1"]))
def test_labels_csv_in_any_common_encoding(tmp_path, rows, encoding):
    """labels.csv as spreadsheets write it: UTF-8 with or without a byte-order mark, or
    Latin-1; names and categories come back as written."""
    root = tmp_path / "labels"
    root.mkdir(exist_ok=True)
    text = "image,category,split\n" + "".join(f"{n},{c},{s}\n" for n, c, s in rows)
    data = text.encode(encoding)
    if encoding == "latin-1" and not text.isascii():  # Latin-1 bytes that are also valid
        try:                                           # UTF-8 ("Â\x80") read as UTF-8
            data.decode("utf-8")
            assume(False)
        except UnicodeDecodeError:
            pass
    (root / "labels.csv").write_bytes(data)
    got = ds.read_labels_csv(root)
    assert got == {n: (ds.normalise_kind(c), s or "train") for n, c, s in rows}


@SETTINGS
@given(blob=st.binary(max_size=200))
def test_labels_and_texture_files_of_any_bytes(tmp_path, blob):
    root = tmp_path / "anybytes"
    (root / "labels" / "texture").mkdir(parents=True, exist_ok=True)
    (root / "labels.csv").write_bytes(blob)
    for f in ("pattern_ann.txt", "fabric_ann.txt"):
        (root / "labels" / "texture" / f).write_bytes(blob)
    try:
        labels = ds.read_labels_csv(root)
        assert isinstance(labels, dict)
    except UserError as e:
        assert "\n" not in str(e)
    texture = ds.read_texture_labels(root)
    assert all(v is None or v in PATTERNS_AND_FABRICS for entry in texture.values()
               for values in entry.values() for v in values)


@SETTINGS
@given(prompts=st.lists(any_text, min_size=1, max_size=3))
def test_prompts_of_any_characters(prompts):
    """Prompts from a command line that was not UTF-8 (lone surrogates) are refused in
    one line before they reach the tokenizer; any other text is cleaned and kept."""
    try:
        out = sample.read_prompts(prompts, None)
    except UserError as e:
        assert "\n" not in str(e)
        assert any(not p.split() for p in prompts) or any(not encodable(p) for p in prompts)
        event("refused")
        return
    assert all(encodable(p) and p for p in out)
    event("kept")


@pytest.mark.parametrize("n_images", [0, 1, 2])
def test_too_few_images_for_a_batch(tmp_path, capsys, n_images):
    """One usable image cannot fill a batch of two: the run refuses and writes nothing;
    two images train."""
    from conftest import tiny_args
    root = fresh(tmp_path, "few")
    captions = {}
    for i in range(max(n_images, 1)):
        name = f"WOMEN-Dresses-id_{i:08d}-01_1_front.jpg"
        (root / "images" / name).write_bytes(jpeg_bytes(i) if i < n_images else b"broken")
        captions[name] = "A red dress."
    (root / "captions.json").write_text(json.dumps(captions))
    out = tmp_path / "out"
    rc = main.main(["--train", "y", "--max_steps", "1"] + tiny_args(root, out))
    err = capsys.readouterr().err
    if n_images < 2:
        last = err.strip().split("\n")[-1]  # after the progress bars
        assert rc == 2 and last.startswith("error: ") and "Traceback" not in err
        assert ("a batch needs at least 2" in last) if n_images else ("no usable images" in last)
        assert not (out / "stage1" / "last.pt").exists()
    else:
        assert rc == 0 and load_checkpoint(out / "stage1" / "last.pt")["step"] == 1


@SETTINGS
@example(blob=b"", meta=None, version=2, n_texts=2, shape=(2, 4), fill=0.5)  # a usable cache
@given(blob=st.binary(max_size=300), meta=json_values, version=st.sampled_from([2, 1, "2"]),
       n_texts=st.integers(0, 3), shape=st.sampled_from([(2, 4), (3, 4), (0, 4), (3,), (3, 4, 1)]),
       fill=st.sampled_from([0.5, float("nan"), float("inf")]))
def test_embeddings_cache_of_any_content(tmp_path, blob, meta, version, n_texts, shape, fill):
    """embeddings.pickle holding any bytes, or arrays of any shape and value: read with
    pickles refused, and used only when texts and finite vectors match."""
    from get_embeddings import read_cache
    path = tmp_path / "embeddings.pickle"
    path.write_bytes(blob)
    with pytest.raises(UserError):
        read_cache(path)
    header = {"version": version, "model": "m", "dim": 4, "captions_hash": "h"}
    if isinstance(meta, dict):
        header = {**header, **meta}
    with open(path, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(header)), texts=np.array([f"t{i}" for i in range(n_texts)]),
                 embeddings=np.full(shape, fill, np.float32))
    try:
        cache = read_cache(path)
    except UserError as e:
        assert "\n" not in str(e)
        event("refused")
        return
    assert len(cache["texts"]) == len(cache["embeddings"]) and np.isfinite(cache["embeddings"]).all()
    event("read")


@pytest.mark.parametrize("flag,msg", [("--embeddings_path", "cannot write /proc/"),
                                      ("--cache_dir", "cannot write the image cache /proc/"),
                                      ("--out_dir", "cannot create the folder /proc/out")])
def test_unwritable_destinations(dfmm, tmp_path, capsys, flag, msg):
    """Caches and outputs that cannot be written: one line naming the file, exit 2."""
    from conftest import tiny_args
    root, _ = dfmm
    args = tiny_args(root, tmp_path / "out", cache_dir=tmp_path / "cache")
    dest = {"--embeddings_path": "/proc/emb.pickle", "--cache_dir": "/proc/sys",
            "--out_dir": "/proc/out"}[flag]
    rc = main.main(["--train", "y"] + args + [flag, dest])  # the last value of a flag counts
    last = capsys.readouterr().err.strip().split("\n")[-1]
    assert rc == 2 and last.startswith("error: ") and msg in last
