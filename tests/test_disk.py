"""Disks that fill up and checkpoints that pile up: every write that fails for want of
space is one line naming the file (exit 2), the last good checkpoint survives and
resumes once there is room; --keep_checkpoints bounds the checkpoints; an exported
generator draws what its checkpoint draws and is refused when damaged.

A full disk is a real small tmpfs where the tests may mount one (root), else a
simulated one: the writer's file (utils._open_for_writing) and its space reservation
(utils.reserve) raise OSError(ENOSPC) past the disk's size, as the kernel does."""
import errno
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import app
import datasets
import evaluate
import get_embeddings
import main
import sample
import train
import utils
from config import Config
from conftest import tiny_args, write_dfmm
from model import Stage1_G, Stage2_G
from test_checkpoints import tensor_spans
from utils import (LossLog, UserError, WriteError, load_checkpoint, save_checkpoint, save_grid,
                   weights_sha256)


# ------------------------------------------------------------------ a small disk

def _used(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


class SimulatedDisk:
    """`size` bytes under `root`: files written through utils' writer, and space
    reserved for memory maps, fail with ENOSPC once the files there would pass it."""

    def __init__(self, root: Path, size: int, monkeypatch):
        self.root, self.size = root, size
        root.mkdir(parents=True)
        real_open, real_reserve, real_free = utils._open_for_writing, utils.reserve, utils.free_bytes
        disk = self

        class Limited:
            def __init__(self, f):
                self.f = f

            def write(self, b):
                if _used(disk.root) + len(b) > disk.size:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                n = self.f.write(b)
                self.f.flush()
                return n

            def __getattr__(self, name):
                return getattr(self.f, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

        def open_for_writing(path):
            f = real_open(path)
            return Limited(f) if self.holds(path) else f

        def reserve(path, nbytes):
            if self.holds(path) and _used(root) - Path(path).stat().st_size + nbytes > self.size:
                raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} for its "
                                            f"{utils.human_bytes(nbytes)}")
            real_reserve(path, nbytes)

        def free_bytes(path):
            return max(0, self.size - _used(root)) if self.holds(path) else real_free(path)

        monkeypatch.setattr(utils, "_open_for_writing", open_for_writing)
        monkeypatch.setattr(utils, "reserve", reserve)
        monkeypatch.setattr(datasets, "reserve", reserve)
        monkeypatch.setattr(utils, "free_bytes", free_bytes)
        monkeypatch.setattr(train, "free_bytes", free_bytes)

    def holds(self, path) -> bool:
        return Path(os.path.abspath(path)).is_relative_to(self.root.resolve())

    def resize(self, size: int):
        self.size = size

    def close(self):
        pass


class Tmpfs:
    """A real tmpfs of `size` bytes mounted at `root`."""

    def __init__(self, root: Path, size: int):
        self.root = root
        root.mkdir(parents=True)
        self._mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(root))

    @staticmethod
    def _mount(*args):
        subprocess.run(["mount", *args], check=True, capture_output=True)

    def resize(self, size: int):
        self._mount("-o", f"remount,size={size}", str(self.root))

    def close(self):
        subprocess.run(["umount", "-l", str(self.root)], capture_output=True)


def _can_mount() -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    probe = Path(f"/tmp/.tmpfs-probe-{uuid.uuid4().hex}")
    try:
        Tmpfs(probe, 1 << 16).close()
        return True
    except (OSError, subprocess.CalledProcessError):
        return False
    finally:
        shutil.rmtree(probe, ignore_errors=True)


REAL_TMPFS = _can_mount()


@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    """small_disk(size) -> a disk of about `size` bytes (a real tmpfs when one can be
    mounted here, else simulated) with .root, .resize(size)."""
    disks = []

    def make(size: int):
        root = tmp_path / f"disk{len(disks)}"
        disk = Tmpfs(root, size) if REAL_TMPFS else SimulatedDisk(root, size, monkeypatch)
        disks.append(disk)
        return disk

    yield make
    for d in disks:
        d.close()


def last_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return err.strip().split("\n")[-1]


def no_temporary_files(root: Path) -> bool:
    return not [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def run_args(data: Path, out: Path, *extra) -> list:
    return ["--train", "y"] + tiny_args(data / "data", out, cache_dir=data / "cache") + list(extra)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A tiny DFMM folder (18 samples: two steps an epoch at batch 8), its caches, and a
    one-epoch Stage-I run of it in run1/ (checkpoints/epoch_0001.pt and last.pt)."""
    root = tmp_path_factory.mktemp("disk_data")
    write_dfmm(root / "data", per_category=1)
    assert main.main(run_args(root, root / "run1", "--epochs", "1", "--ema_decay", "0.9")) == 0
    return root


# ------------------------------------------------------------- the one writer

def test_torch_save_on_a_full_disk_is_one_line_and_the_old_file_survives(small_disk):
    disk = small_disk(1 << 20)
    good = save_checkpoint({"netG": {"w": torch.zeros(1000)}, "config": {}}, disk.root / "c.pt")
    before = good.read_bytes()
    with pytest.raises(WriteError) as e:  # torch.save's own RuntimeError, from the disk's ENOSPC
        save_checkpoint({"netG": {"w": torch.zeros(1 << 19)}, "config": {}}, good)
    msg = str(e.value)
    assert msg.startswith(f"cannot write {good}: No space left on device (") and "free there" in msg
    assert "\n" not in msg and "enforce fail" not in msg
    assert good.read_bytes() == before and no_temporary_files(disk.root)


def test_torch_errors_without_an_os_error_are_read_too(tmp_path):
    """torch's own file writer reports a full disk without the OSError behind it."""
    e = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    err = utils.write_error(tmp_path / "x.pt", e)
    assert isinstance(err, WriteError) and str(err).startswith(f"cannot write {tmp_path / 'x.pt'}")
    assert utils.write_error(tmp_path / "x.pt", RuntimeError("a bug")) is None


def test_grids_and_loss_logs_on_a_full_disk(small_disk):
    disk = small_disk(1 << 16)
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    grid = save_grid(images, disk.root / "samples" / "g.png", nrow=2)
    before = grid.read_bytes()
    (disk.root / "filler").write_bytes(b"\0" * 4096)
    while utils.free_bytes(disk.root) > 4096:  # the disk is full, but for a few bytes
        with open(disk.root / "filler", "ab") as f:
            f.write(b"\0" * min(4096, utils.free_bytes(disk.root) - 2048))
    with pytest.raises(WriteError, match=r"^cannot write .*g\.png: No space left on device"):
        save_grid(torch.rand(64, 3, 16, 16), grid, nrow=8)
    assert grid.read_bytes() == before
    log = LossLog(disk.root / "losses.csv")
    for step in range(2000):
        log.log(step, {"d_loss": step, "g_loss": 1.0, "g_adv": 2.0, "kl": 3.0})
    with pytest.raises(WriteError, match=r"^cannot write .*losses\.(csv|png): No space left"):
        log.flush()
    assert no_temporary_files(disk.root)


def test_a_file_where_a_folder_should_be(tmp_path, capsys, monkeypatch, dfmm):
    root, _ = dfmm
    blocker = tmp_path / "FILE"
    blocker.write_text("not a folder")

    def no_encoding(*a, **k):
        raise AssertionError("the folder is checked before the captions are encoded")

    monkeypatch.setattr(get_embeddings, "build_cache", no_encoding)
    for out in (blocker / "emb.pickle", blocker / "sub" / "emb.pickle"):
        rc = get_embeddings.main(["--data_dir", str(root), "--out", str(out),
                                  "--cache_dir", str(tmp_path / "cache")])
        assert rc == 2
        assert last_error(capsys) == (f"error: cannot create the folder {out.parent}: {blocker} "
                                      "is a file, not a folder; choose another name or folder")


def test_full_disk_during_the_image_and_embedding_caches(data, small_disk, capsys):
    disk = small_disk(1 << 13)  # the 16 px images take 14 kB, their captions' vectors 34 kB
    args = run_args(data, data / "o_cache", "--max_steps", "1")
    rc = main.main(args + ["--cache_dir", str(disk.root / "cache")])
    line = last_error(capsys)
    assert rc == 2 and line.startswith(f"error: cannot write the image cache "
                                       f"{disk.root / 'cache' / 'images_16.npy'}: No space left")
    assert "set --cache_dir to a writable folder with room" in line
    assert no_temporary_files(disk.root)
    rc = get_embeddings.main(["--data_dir", str(data / "data"), "--cache_dir", str(data / "cache"),
                              "--out", str(disk.root / "emb.pickle")])
    line = last_error(capsys)
    assert rc == 2 and line.startswith(f"error: cannot write {disk.root / 'emb.pickle'}: No space")
    assert not (disk.root / "emb.pickle").exists() and no_temporary_files(disk.root)


def test_full_disk_on_the_page_is_a_message_and_leaves_no_request_folder(small_disk):
    disk = small_disk(1 << 12)  # 16 images of 16 px take 7 kB, their zip 9 kB
    torch.manual_seed(0)
    cfg = Config(stage=1, stage1_size=16, stage2_size=64, gf_dim=4, df_dim=4, r_num=1)
    drawer = sample.Drawer(Stage1_G(cfg), cfg, "cpu")
    studio = app.Studio(disk.root / "out", drawer=drawer)
    r = studio.handle("a red dress\na pair of black leggings", 8, 0, None)
    assert not r.images and r.message.startswith("Cannot draw: cannot write ")
    assert "No space left on device" in r.message and "\n" not in r.message
    assert not [p for p in (disk.root / "out" / "app").iterdir()]
    disk.resize(1 << 22)
    assert len(studio.handle("a red dress", 2, 0, None).images) == 2  # room again: drawn


# ----------------------------------------------------------- training's disk use

def test_full_disk_in_training_keeps_the_last_checkpoint_and_resumes(data, small_disk, capsys,
                                                                     monkeypatch):
    size = (data / "run1" / "stage1" / "last.pt").stat().st_size
    disk = small_disk(int(2.6 * size))  # last.pt and epoch_0001.pt, and half a checkpoint
    shutil.copytree(data / "run1", disk.root / "out")
    out, last = disk.root / "out", disk.root / "out" / "stage1" / "last.pt"
    good = last.read_bytes()
    args = run_args(data, out, "--epochs", "2", "--resume", "auto")
    capsys.readouterr()

    # the free-space check stops before anything is written
    assert main.main(args) == 2
    line = last_error(capsys)
    assert line.startswith(f"error: not enough disk space for the next checkpoint in {out / 'stage1'}")
    assert f"the last good checkpoint {last} was kept" in line
    assert f"resume with: python main.py --train y --stage 1 --out_dir {out} --resume {last}" in line
    assert last.read_bytes() == good
    assert sorted(p.name for p in (out / "stage1" / "checkpoints").iterdir()) == ["epoch_0001.pt"]

    # the disk fills after the check: torch.save's failure is the same kind of line
    monkeypatch.setattr(train, "free_bytes", lambda path: 1 << 40)
    assert main.main(args) == 2
    line = last_error(capsys)
    tagged = out / "stage1" / "checkpoints" / "epoch_0002.pt"
    assert line.startswith(f"error: cannot write {tagged}: No space left on device (")
    assert f"the last good checkpoint {last} was kept; once there is room, resume with:" in line
    assert last.read_bytes() == good and load_checkpoint(last, resume=True)["epoch"] == 1
    assert not tagged.exists() and no_temporary_files(disk.root)

    # room again: the same command resumes and finishes
    monkeypatch.undo()
    disk.resize(8 * size)
    assert main.main(args) == 0, capsys.readouterr().err
    state = load_checkpoint(last, resume=True)
    assert state["epoch"] == 2 and state["step"] == 4 and tagged.is_file()  # two steps an epoch


def test_keep_checkpoints_bounds_the_tagged_copies(data, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(data / "run1", out)
    stage = out / "stage1"
    names = lambda: sorted(p.name for p in (stage / "checkpoints").iterdir())  # noqa: E731
    assert main.main(run_args(data, out, "--epochs", "3", "--resume", "auto",
                              "--max_steps", "3")) == 0
    assert names() == ["epoch_0001.pt", "interrupted.pt"]  # stopped inside epoch 2
    assert main.main(run_args(data, out, "--epochs", "3", "--resume", "auto")) == 0
    # the default keeps two; interrupted.pt went with the first epoch checkpoint after it
    assert names() == ["epoch_0002.pt", "epoch_0003.pt"]
    assert (stage / "checkpoints" / "epoch_0003.pt").read_bytes() == (stage / "last.pt").read_bytes()
    assert main.main(run_args(data, out, "--epochs", "4", "--resume", "auto",
                              "--keep_checkpoints", "0")) == 0
    assert names() == [] and load_checkpoint(stage / "last.pt", resume=True)["epoch"] == 4
    assert main.main(run_args(data, out, "--keep_checkpoints", "-1")) == 2
    assert "--keep_checkpoints: must be from 0 to 100000, got -1" in capsys.readouterr().err


# ------------------------------------------------------------ sharing a generator

@pytest.fixture(scope="module")
def exported(data):
    """The one-epoch Stage-I run's checkpoint and its exported generator."""
    shared = data / "shared" / "g.pt"
    assert main.main(["--export", str(shared), "--out_dir", str(data / "run1")]) == 0
    return data / "run1" / "stage1" / "last.pt", shared


def pngs(folder: Path):
    return [np.asarray(Image.open(p)) for p in sorted(folder.glob("0*.png"))]


def test_export_holds_the_ema_generator_and_draws_the_same_images(exported, tmp_path, capsys):
    ckpt, shared = exported
    state, full = load_checkpoint(shared), load_checkpoint(ckpt)
    assert set(state) == {"netG", "config", "stage1_config", "text_model", "weights_sha256",
                          "exported_from", "vocabulary"}
    assert state["vocabulary"] == full["vocabulary"] and "dress" in state["vocabulary"]
    assert all(torch.equal(state["netG"][k], v) for k, v in full["netG_ema"].items())
    assert state["weights_sha256"] == weights_sha256(full["netG_ema"])
    assert state["text_model"] == full["config"]["text_model"] == "all-MiniLM-L6-v2"
    assert shared.stat().st_size < ckpt.stat().st_size / 2
    prompts = ["--prompt", "a red floral dress", "--prompt", "a pair of black leggings"]
    for name, path in (("ckpt", ckpt), ("shared", shared)):
        assert main.main(["--train", "n", "--net_g", str(path), "--out_dir", str(tmp_path / name),
                          "--n_samples", "2", "--seed", "7", "--device", "cpu"] + prompts) == 0
    a, b = pngs(tmp_path / "ckpt" / "generated"), pngs(tmp_path / "shared" / "generated")
    assert len(a) == 4 and all(np.array_equal(x, y) for x, y in zip(a, b))
    # the page draws them too
    r = app.Studio(tmp_path / "page", net_g=shared, device="cpu").handle(
        "a red floral dress\na pair of black leggings", 2, 7, None)
    assert all(np.array_equal(np.asarray(Image.open(p)), y) for p, y in zip(r.images, a))
    # and evaluate.py measures the same generator in it: the same images, the same figures
    grids, figures = [], []
    for path in (ckpt, shared):
        cfg = Config(data_dir=str(ckpt.parents[2] / "data"), device="cpu", wandb_mode="disabled",
                     cache_dir=str(ckpt.parents[2] / "cache"), out_dir=str(tmp_path / path.stem))
        m = evaluate.evaluate(path, cfg, n_per_kind=2, k=2, feat_epochs=1, feat_width=4,
                              progress=False)
        grids.append(np.asarray(Image.open(m["grid"])))
        figures.append((m["variety_generated"], m["kind_acc_generated"], m["r_precision_generated"]))
    assert np.array_equal(grids[0], grids[1]) and figures[0] == figures[1]


def test_a_damaged_export_is_refused_with_one_line(exported, tmp_path, capsys):
    ckpt, shared = exported
    blob = bytearray(shared.read_bytes())
    start, end = max(tensor_spans(bytes(blob)), key=lambda s: s[1] - s[0])
    blob[(start + end) // 2] ^= 0x10
    bad = tmp_path / "bad.pt"
    bad.write_bytes(bytes(blob))
    with pytest.raises(UserError, match="^damaged generator: .*SHA-256 of its weights"):
        load_checkpoint(bad)
    for run in (lambda: main.main(["--train", "n", "--net_g", str(bad), "--out_dir", str(tmp_path)]),
                lambda: evaluate.main(["--net_g", str(bad), "--out_dir", str(tmp_path)])):
        assert run() == 2
        assert last_error(capsys).startswith(f"error: damaged generator: {bad}")
    assert "damaged generator" in app.Studio(tmp_path, net_g=bad).describe()
    # weights changed and every entry's checksum written again: the weights' hash still differs
    state = load_checkpoint(shared)
    state["netG"] = {k: v + 1 if v.is_floating_point() else v for k, v in state["netG"].items()}
    save_checkpoint(state, bad)
    with pytest.raises(UserError, match="^damaged generator"):
        load_checkpoint(bad)


def test_an_export_does_not_resume_training_or_replace_its_source(exported, data, capsys):
    ckpt, shared = exported
    assert main.main(run_args(data, data / "o_resume", "--resume", str(shared))) == 2
    line = last_error(capsys)
    assert line.startswith(f"error: {shared} is an exported generator") and "resumes only" in line
    assert main.main(["--export", str(ckpt), "--net_g", str(ckpt)]) == 2
    assert "would replace the checkpoint it exports" in last_error(capsys)
    assert main.main(["--export", str(data / "x.pt"), "--out_dir", str(data / "nothing")]) == 2
    assert "no generator checkpoint found" in last_error(capsys)


def test_a_stage2_export_holds_both_stages(tmp_path):
    torch.manual_seed(0)
    tiny = dict(stage1_size=16, stage2_size=64, gf_dim=4, df_dim=4, r_num=1)
    cfg1, cfg2 = Config(stage=1, **tiny), Config(stage=2, **tiny)
    g = Stage2_G(cfg2, Stage1_G(cfg1))
    ema = {k: v + 0.01 if v.is_floating_point() else v for k, v in g.state_dict().items()}
    save_checkpoint({"netG": g.state_dict(), "netG_ema": ema, "config": cfg2.to_dict(),
                     "stage1_config": cfg1.to_dict(), "vocabulary": ["dress", "red"]},
                    tmp_path / "s2.pt")
    shared = sample.export_generator(tmp_path / "s2.pt", tmp_path / "g2.pt")
    state = load_checkpoint(shared)
    assert state["vocabulary"] == ["dress", "red"] and state["stage1_config"] == cfg1.to_dict()
    assert any(k.startswith("stage1.") for k in state["netG"])
    emb = torch.randn(3, cfg2.text_dim)
    drawn = [sample.sample_images(sample.load_generator(p, "cpu")[0], emb, 2, seed=5)
             for p in (tmp_path / "s2.pt", shared)]
    assert torch.equal(drawn[0], drawn[1])
