import pandas as pd
import pytest
import torch
from PIL import Image

import main
import sample
from conftest import tiny_args
from utils import load_checkpoint


def run(args, capsys):
    rc = main.main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_stage1_stage2_then_generation(dfmm, tmp_path, capsys):
    root, _ = dfmm
    out = tmp_path / "out"
    base = tiny_args(root, out)

    rc, stdout, err = run(["--train", "y", "--stage", "1"] + base, capsys)
    assert rc == 0, err
    s1 = out / "stage1"
    assert (s1 / "last.pt").is_file() and (s1 / "checkpoints" / "epoch_0002.pt").is_file()
    grid = Image.open(s1 / "samples" / "epoch_0002.png")
    assert grid.width > 16 * 5 and grid.height >= 16 * 5  # one row per kind at least
    log = pd.read_csv(s1 / "losses.csv")
    assert {"step", "d_loss", "g_loss", "kl", "lr_g"} <= set(log.columns) and len(log) > 0
    assert Image.open(s1 / "losses.png").size == (900, 480)  # the loss curves beside the CSV
    state = load_checkpoint(s1 / "last.pt")
    assert state["epoch"] == 2 and state["config"]["stage"] == 1
    # LR halves every lr_decay_epoch (1 here): after two epochs it is a quarter
    assert state["optG"]["param_groups"][0]["lr"] == pytest.approx(2e-4 / 4)

    rc, stdout, err = run(["--train", "y", "--stage", "2", "--stage1_g", str(s1 / "last.pt")] + base,
                          capsys)
    assert rc == 0, err
    s2 = out / "stage2"
    state2 = load_checkpoint(s2 / "last.pt")
    assert state2["config"]["stage"] == 2 and state2["stage1_config"]["stage"] == 1
    # Stage II carries the frozen Stage-I weights unchanged (the EMA generator's, when kept)
    assert state["netG_ema"] is not None
    for k, v in state["netG_ema"].items():
        assert torch.equal(state2["netG"]["stage1." + k], v), k
    assert Image.open(s2 / "samples" / "epoch_0002.png").height >= 64

    prompts = ["red dress with lace", "black leggings", "a pair of white sneakers"]
    gen_args = ["--train", "n", "--out_dir", str(out), "--n_samples", "3", "--seed", "7"]
    for p in prompts:
        gen_args += ["--prompt", p]
    rc, stdout, err = run(gen_args, capsys)
    assert rc == 0, err
    g = out / "generated"
    grid = Image.open(g / "grid.png")
    singles = sorted(g.glob("0*.png"))
    assert len(singles) == 9
    assert Image.open(singles[0]).size == (64, 64)  # Stage II picked by default
    assert grid.height >= 3 * 64
    first = [Image.open(p).tobytes() for p in singles]
    # same seed, same images
    rc, _, err = run(gen_args, capsys)
    assert rc == 0, err
    assert [Image.open(p).tobytes() for p in sorted(g.glob("0*.png"))] == first
    # at the tensor level: same seed equal, another seed different
    netG, _, _ = sample.load_generator(s2 / "last.pt", "cpu")
    emb = torch.randn(2, 384)
    a, b = sample.sample_images(netG, emb, 2, seed=1), sample.sample_images(netG, emb, 2, seed=1)
    assert torch.equal(a, b) and a.shape == (4, 3, 64, 64)
    assert not torch.equal(a, sample.sample_images(netG, emb, 2, seed=2))

    # prompts from a file, Stage I explicitly
    pf = tmp_path / "prompts.txt"
    pf.write_text("blue t-shirt\n\nnavy pants\n" + "a very long red dress " * 120 + "\n")
    rc, stdout, err = run(["--train", "n", "--out_dir", str(out), "--prompts_file", str(pf),
                           "--net_g", str(s1 / "last.pt"), "--n_samples", "2"], capsys)
    assert rc == 0, err
    assert "prompt 3 is longer than the text encoder reads" in stdout
    assert Image.open(g / "000_blue-t-shirt_0.png").size == (16, 16)


def test_stage2_without_stage1_is_a_clear_error(dfmm, tmp_path, capsys):
    root, _ = dfmm
    rc, _, err = run(["--train", "y", "--stage", "2"] + tiny_args(root, tmp_path / "o"), capsys)
    assert rc == 2
    assert "--stage1_g" in err and "Traceback" not in err


def test_stage2_with_a_stage2_checkpoint_as_stage1_is_refused(dfmm, tmp_path, capsys):
    bogus = tmp_path / "x.pt"
    bogus.write_bytes(b"garbage")
    root, _ = dfmm
    rc, _, err = run(["--train", "y", "--stage", "2", "--stage1_g", str(bogus)] +
                     tiny_args(root, tmp_path / "o"), capsys)
    assert rc == 2 and "not a readable checkpoint" in err


@pytest.mark.parametrize("prompt", ["", "   "])
def test_empty_prompt_is_a_clear_error(tmp_path, capsys, prompt):
    rc, _, err = run(["--train", "n", "--out_dir", str(tmp_path), "--prompt", prompt], capsys)
    assert rc == 2 and "prompt is empty" in err


def test_generation_without_checkpoint_says_what_to_do(tmp_path, capsys):
    rc, _, err = run(["--train", "n", "--out_dir", str(tmp_path), "--prompt", "red dress"], capsys)
    assert rc == 2 and "train one first" in err


def test_missing_data_dir_is_a_clear_error(tmp_path, capsys):
    rc, _, err = run(["--train", "y"] + tiny_args(tmp_path / "missing", tmp_path / "o"), capsys)
    assert rc == 2 and "does not exist" in err


def test_captions_without_images_is_a_clear_error(dfmm, tmp_path, capsys):
    root, _ = dfmm
    for p in (root / "images").iterdir():
        p.unlink()
    rc, _, err = run(["--train", "y"] + tiny_args(root, tmp_path / "o"), capsys)
    assert rc == 2 and "none of the" in err


def test_stale_embeddings_is_a_clear_error(dfmm, tmp_path, capsys):
    import json
    root, _ = dfmm
    args = ["--train", "y"]
    rc, _, err = run(args + tiny_args(root, tmp_path / "o") + ["--epochs", "1"], capsys)
    assert rc == 0, err
    caps = json.loads((root / "captions.json").read_text())
    caps[next(iter(caps))] = "Something else entirely."
    (root / "captions.json").write_text(json.dumps(caps))
    rc, _, err = run(args + tiny_args(root, tmp_path / "o"), capsys)
    assert rc == 2 and "stale" in err and "get_embeddings.py" in err


def test_corrupt_jpeg_is_skipped_not_fatal(dfmm, tmp_path, capsys):
    root, _ = dfmm
    victim = next((root / "images").glob("*Dresses*"))
    victim.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    rc, stdout, err = run(["--train", "y"] + tiny_args(root, tmp_path / "o") + ["--epochs", "1"], capsys)
    assert rc == 0, err
    assert (tmp_path / "o" / "stage1" / "last.pt").is_file()


def test_unwritable_output_dir_is_a_clear_error(dfmm, tmp_path, capsys):
    root, _ = dfmm
    blocker = tmp_path / "file"
    blocker.write_text("a file where the output folder should go")
    rc, _, err = run(["--train", "y"] + tiny_args(root, blocker / "out"), capsys)
    assert rc == 2 and f"cannot create the folder {blocker / 'out' / 'stage1'}: {blocker} is a " \
        "file, not a folder" in err


def test_training_with_every_small_data_switch(dfmm, tmp_path, capsys):
    root, _ = dfmm
    rc, _, err = run(["--train", "y"] + tiny_args(root, tmp_path / "o") +
                     ["--loss", "hinge", "--d_norm", "sn", "--diffaug", "color,translation,cutout",
                      "--r1_gamma", "1", "--ema_decay", "0.9", "--epochs", "1"], capsys)
    assert rc == 0, err
    state = load_checkpoint(tmp_path / "o" / "stage1" / "last.pt")
    assert state["netG_ema"] is not None and state["config"]["loss"] == "hinge"
    # the EMA generator is saved with BatchNorm statistics of its own weights, not the
    # live generator's copied ones
    var = [k for k in state["netG"] if k.endswith("running_var")]
    assert var and any(not torch.equal(state["netG"][k], state["netG_ema"][k]) for k in var)
    log = pd.read_csv(tmp_path / "o" / "stage1" / "losses.csv")
    assert "r1" in log.columns and (log["r1"] >= 0).all()


@pytest.mark.parametrize("flag,value,msg", [("--loss", "wgan", "--loss: expected one of bce, hinge"),
                                            ("--diffaug", "rotate", "unknown policy"),
                                            ("--batch_size", "0", "--batch_size: must be from 2"),
                                            ("--ema_decay", "1.5", "ema_decay")])
def test_bad_setting_values(tmp_path, capsys, flag, value, msg):
    rc, _, err = run(["--train", "y", "--out_dir", str(tmp_path), flag, value], capsys)
    assert rc == 2 and msg in err and "Traceback" not in err
