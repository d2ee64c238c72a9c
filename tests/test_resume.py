"""Resume, interruption, divergence and multi-process training."""
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp

import main
from config import Config
from conftest import ROOT, tiny_args
from model import build_models
from utils import load_checkpoint, set_seed

STATE_KEYS = ("netG", "netD", "netG_ema")


def assert_same_state(a, b):
    for key in STATE_KEYS:
        assert a[key].keys() == b[key].keys()
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), f"{key}.{k}"
    for key in ("optG", "optD"):
        for pid, st in a[key]["state"].items():
            for k, v in st.items():
                assert torch.equal(v, b[key]["state"][pid][k]), f"{key}.{pid}.{k}"
    assert a["schedG"] == b["schedG"] and a["step"] == b["step"]


@pytest.mark.parametrize("stop_at", [4, 6])  # at the end of epoch 1, inside epoch 2
def test_stopped_and_resumed_equals_uninterrupted(dfmm, tmp_path, capsys, stop_at):
    root, _ = dfmm
    extra = ["--ema_decay", "0.9", "--cache_dir", str(tmp_path / "cache")]
    assert main.main(["--train", "y"] + tiny_args(root, tmp_path / "a") + extra) == 0
    full = load_checkpoint(tmp_path / "a" / "stage1" / "last.pt")

    args = ["--train", "y"] + tiny_args(root, tmp_path / "b") + extra
    assert main.main(args + ["--max_steps", str(stop_at)]) == 0
    assert "Resume with" in capsys.readouterr().out
    part = load_checkpoint(tmp_path / "b" / "stage1" / "last.pt")
    assert part["step"] == stop_at
    assert main.main(args + ["--resume", "auto"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert_same_state(full, load_checkpoint(tmp_path / "b" / "stage1" / "last.pt"))


def test_preempted_runs_resume_with_a_new_step_limit(dfmm, tmp_path, capsys):
    """A cluster job stopped by --max_steps resumes with --resume auto and another
    --max_steps (the limit counts steps in all), as often as it is pre-empted."""
    root, _ = dfmm
    args = ["--train", "y"] + tiny_args(root, tmp_path / "p")
    assert main.main(args + ["--max_steps", "2"]) == 0
    assert main.main(args + ["--resume", "auto", "--max_steps", "3"]) == 0
    assert load_checkpoint(tmp_path / "p" / "stage1" / "last.pt")["step"] == 3
    assert main.main(args + ["--resume", "auto", "--max_steps", "5"]) == 0
    assert load_checkpoint(tmp_path / "p" / "stage1" / "last.pt")["step"] == 5
    assert "error" not in capsys.readouterr().err


def test_resume_stage2_and_mismatching_settings(dfmm, tmp_path, capsys):
    root, _ = dfmm
    base = tiny_args(root, tmp_path / "o")
    assert main.main(["--train", "y", "--stage", "1"] + base) == 0
    s1 = str(tmp_path / "o" / "stage1" / "last.pt")
    assert main.main(["--train", "y", "--stage", "2", "--stage1_g", s1, "--max_steps", "2"] + base) == 0
    # Stage II resumes without --stage1_g: the frozen Stage I travels in the checkpoint
    assert main.main(["--train", "y", "--stage", "2", "--resume", "auto"] + base) == 0
    state = load_checkpoint(tmp_path / "o" / "stage2" / "last.pt")
    assert state["epoch"] == 2
    capsys.readouterr()
    rc = main.main(["--train", "y", "--stage", "2", "--resume", "auto"] + base + ["--gf_dim", "8"])
    err = capsys.readouterr().err
    assert rc == 2 and "gf_dim=4 (now 8)" in err
    rc = main.main(["--train", "y", "--stage", "1", "--resume",
                    str(tmp_path / "o" / "stage2" / "last.pt")] + base)
    assert rc == 2 and "Stage-2 checkpoint" in capsys.readouterr().err


def test_same_seed_same_training(dfmm, tmp_path):
    root, _ = dfmm
    for name in ("x", "y"):
        assert main.main(["--train", "y", "--epochs", "1"] + tiny_args(root, tmp_path / name)) == 0
    a = load_checkpoint(tmp_path / "x" / "stage1" / "last.pt")
    b = load_checkpoint(tmp_path / "y" / "stage1" / "last.pt")
    for k in a["netG"]:
        assert torch.equal(a["netG"][k], b["netG"][k])


def test_non_finite_loss_stops_and_keeps_checkpoint(dfmm, tmp_path, capsys):
    root, _ = dfmm
    out = tmp_path / "o"
    assert main.main(["--train", "y"] + tiny_args(root, out)) == 0
    good = (out / "stage1" / "last.pt").read_bytes()
    capsys.readouterr()
    rc = main.main(["--train", "y"] + tiny_args(root, out) + ["--lr_d", "1e30", "--lr_g", "1e30",
                                                             "--epochs", "3"])
    err = capsys.readouterr().err
    assert rc == 2 and "diverged" in err and "was kept" in err
    # the good checkpoint survives: the divergent run wrote none before failing
    assert (out / "stage1" / "last.pt").read_bytes() == good


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_and_exits_zero(dfmm, tmp_path, sig):
    root, _ = dfmm
    out = tmp_path / "o"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, str(ROOT / "main.py"), "--train", "y"] + tiny_args(root, out) + \
        ["--epochs", "100000", "--snapshot_interval", "1"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    first = out / "stage1" / "last.pt"  # the first snapshot
    deadline = time.time() + 120
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert first.exists(), proc.communicate()[1][-2000:]
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr[-2000:]
    assert "Resume with: python main.py" in stdout
    assert "Traceback" not in stderr
    state = load_checkpoint(out / "stage1" / "last.pt")
    assert (out / "stage1" / "checkpoints" / "interrupted.pt").is_file()
    assert (out / "stage1" / "samples" / "interrupted.png").is_file()
    assert state["step"] >= 1


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, argv, out_file):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    args = main.build_parser().parse_args(argv)
    cfg, explicit = main.make_config(args)
    result = main.train(cfg, explicit)
    torch.save({"netG": result["netG"].state_dict(), "netD": result["netD"].state_dict(),
                "step": result["step"]}, f"{out_file}.{rank}")


def test_ddp_two_processes_end_with_identical_weights(dfmm, tmp_path):
    root, _ = dfmm
    # prepare caches and embeddings once, in this process
    argv = ["--train", "y"] + tiny_args(root, tmp_path / "o")
    assert main.main(argv + ["--max_steps", "1", "--out_dir", str(tmp_path / "warm")]) == 0
    out_file = str(tmp_path / "weights")
    # two CPU ranks (gloo): the same on a machine with one GPU, none or several
    mp.spawn(_ddp_worker, args=(2, _free_port(), argv + ["--batch_size", "4", "--device", "cpu"],
                                out_file),
             nprocs=2, join=True)
    w0, w1 = torch.load(out_file + ".0"), torch.load(out_file + ".1")
    assert w0["step"] == w1["step"] > 0
    for key in ("netG", "netD"):
        for k in w0[key]:
            assert torch.equal(w0[key][k], w1[key][k]), f"{key}.{k} differs across ranks"
    # rank 0 wrote the checkpoint, with the weights both ranks ended with
    saved = load_checkpoint(tmp_path / "o" / "stage1" / "last.pt")
    assert saved["step"] == w0["step"]
    assert all(torch.equal(saved["netG"][k], v) for k, v in w0["netG"].items())
    # and they moved away from the initial weights (training seeds them before building)
    set_seed(saved["config"]["seed"])
    init_G, _ = build_models(Config.from_dict(saved["config"]))
    assert init_G.state_dict().keys() == w0["netG"].keys()
    assert any(not torch.equal(w0["netG"][k], p) for k, p in init_G.named_parameters())
