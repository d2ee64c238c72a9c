"""The loss log: its CSV and loss-curve PNG, and what goes to WandB (sample grids, and
WandB's own environment variables below the flags)."""
import numpy as np
import pandas as pd
import pytest
from PIL import Image

import main
from config import Config
from conftest import tiny_args
from utils import LossLog, init_wandb, plot_curves

BLUE, ORANGE = (31, 119, 180), (255, 127, 14)  # the first two colours of matplotlib's cycle


def pixels_of(img: np.ndarray, colour) -> np.ndarray:
    """(y, x) of the pixels within a small distance of `colour`."""
    return np.argwhere(np.abs(img[..., :3].astype(int) - colour).sum(-1) < 30)


def test_plot_curves_draws_each_series_where_its_values_are(tmp_path):
    steps = np.arange(0, 400, 4)
    rising, falling = np.linspace(0.0, 2.0, len(steps)), np.linspace(3.0, 1.0, len(steps))
    path = plot_curves(steps, {"d_loss": rising, "g_loss": falling}, tmp_path / "c.png",
                       size=(640, 360))
    img = np.asarray(Image.open(path))
    assert img.shape[:2] == (360, 640)
    blue, orange = pixels_of(img, BLUE), pixels_of(img, ORANGE)
    assert len(blue) > 300 and len(orange) > 300  # two drawn lines, not a blank chart
    # the rising curve ends higher than it starts (image rows grow downwards), the falling
    # one lower; and the falling curve starts above the rising one
    for pts, rises in ((blue, True), (orange, False)):
        curve = pts[pts[:, 1] < 0.8 * img.shape[1]]  # leave out the legend on the right
        left = curve[curve[:, 1] <= curve[:, 1].min() + 5, 0].mean()
        right = curve[curve[:, 1] >= curve[:, 1].max() - 5, 0].mean()
        assert (right < left) if rises else (right > left)
    assert orange[:, 0].min() < blue[:, 0].min()
    assert not list(tmp_path.glob(".*.tmp"))  # written through a temporary file


def test_smoothing_keeps_a_flat_curve_flat_to_its_ends(tmp_path):
    steps = np.arange(500)  # a moving average over 10 points
    path = plot_curves(steps, {"d_loss": np.ones(500), "g_loss": np.zeros(500)}, tmp_path / "c.png")
    img = np.asarray(Image.open(path))
    # the legend's sample lines on the right left out
    flat, zero = (p[p[:, 1] < 0.8 * img.shape[1]] for p in (pixels_of(img, BLUE), pixels_of(img, ORANGE)))
    assert flat[:, 1].max() - flat[:, 1].min() > 0.6 * img.shape[1]  # across the chart
    assert flat[:, 0].max() - flat[:, 0].min() <= 3  # one height, also at both ends
    assert zero[:, 0].min() - flat[:, 0].max() > 100


def test_loss_log_writes_csv_and_png(tmp_path):
    log = LossLog(tmp_path / "run" / "losses.csv")
    for step in range(1, 31):
        log.log(step, {"d_loss": 1.0 / step, "g_loss": 0.5 + step / 30, "kl": 0.01, "lr_g": 2e-4})
    log.log_image(30, tmp_path / "missing.png")  # without a WandB run: nothing happens
    log.flush()
    df = pd.read_csv(tmp_path / "run" / "losses.csv")
    assert list(df["step"]) == list(range(1, 31)) and df["g_loss"].iloc[-1] == pytest.approx(1.5)
    img = np.asarray(Image.open(tmp_path / "run" / "losses.png"))
    assert img.shape[:2] == (480, 900)
    assert len(pixels_of(img, BLUE)) > 300 and len(pixels_of(img, ORANGE)) > 300


@pytest.fixture
def wandb_env(monkeypatch, tmp_path):
    """No WandB variables set (conftest disables WandB for the other tests), and runs
    started here finished afterwards."""
    for var in ("WANDB_MODE", "WANDB_PROJECT", "WANDB_DIR", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    runs = []
    yield runs
    for run in runs:
        run.finish()


def test_wandb_mode_from_flag_then_variable_then_key(wandb_env, monkeypatch):
    assert Config().resolved_wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert Config().resolved_wandb_mode() == "online"
    for value, mode in (("disabled", "disabled"), ("offline", "offline"), ("dryrun", "offline"),
                        ("Online", "online")):
        monkeypatch.setenv("WANDB_MODE", value)
        assert Config().resolved_wandb_mode() == mode
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert Config(wandb_mode="offline").resolved_wandb_mode() == "offline"


def test_wandb_disabled_by_its_variable_starts_no_run(wandb_env, monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert init_wandb(Config(), "train-stage1", tmp_path / "out") is None
    assert not (tmp_path / "out").exists() and not (tmp_path / "wandb").exists()


def test_wandb_project_and_dir_variables_below_the_flags(wandb_env, monkeypatch, tmp_path):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    run = init_wandb(Config(wandb_mode="offline"), "train-stage1", tmp_path / "out")
    assert run is not None  # the flag beats WANDB_MODE
    wandb_env.append(run)
    assert run.settings.mode == "offline" and run.project == "from-env"
    assert (tmp_path / "wb" / "wandb").is_dir() and not (tmp_path / "out" / "wandb").exists()
    run.finish()
    monkeypatch.delenv("WANDB_DIR")
    run = init_wandb(Config(wandb_mode="offline", wandb_project="from-flag"), "eval",
                     tmp_path / "out")
    wandb_env.append(run)
    assert run.project == "from-flag" and (tmp_path / "out" / "wandb").is_dir()


def test_snapshot_grid_goes_to_wandb(wandb_env, tmp_path):
    pytest.importorskip("wandb")
    run = init_wandb(Config(wandb_mode="offline"), "train-stage1", tmp_path / "out")
    wandb_env.append(run)
    grid = tmp_path / "samples" / "epoch_0001.png"
    grid.parent.mkdir()
    Image.new("RGB", (40, 24), (200, 30, 30)).save(grid)
    log = LossLog(tmp_path / "losses.csv", run)
    log.log(5, {"d_loss": 1.0, "g_loss": 2.0})
    log.log_image(5, grid)
    run.finish()
    logged = list((tmp_path / "out" / "wandb").glob("offline-run-*/files/media/images/samples_5_*.png"))
    assert len(logged) == 1
    assert np.array_equal(np.asarray(Image.open(logged[0])), np.asarray(Image.open(grid)))


def test_training_logs_every_snapshot_grid(wandb_env, dfmm, tmp_path):
    pytest.importorskip("wandb")
    root, _ = dfmm
    out = tmp_path / "o"
    assert main.main(["--train", "y"] + tiny_args(root, out) + ["--wandb", "offline"]) == 0
    samples = sorted(p.name for p in (out / "stage1" / "samples").glob("*.png"))
    assert samples == ["epoch_0001.png", "epoch_0002.png"]
    logged = list((out / "stage1" / "wandb").glob("offline-run-*/files/media/images/samples_*.png"))
    assert len(logged) == len(samples)
