"""Property-based tests: whatever users put in their data folder or on the command line,
the loaders and the CLI answer with a clear error or a counted skip, never a traceback."""
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import datasets as ds
import main
from config import Config
from utils import UserError

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
        out = main.read_prompts([prompt], None)
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
