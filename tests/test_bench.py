import copy
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import bench
import train
from config import Config
from get_embeddings import load_data
from model import build_models


def flops_of_one_step(cfg: Config) -> int:
    """The FLOPs of one train.train_step on a batch of cfg's data, counted here apart from
    bench.py: fresh networks, one batch, torch's FLOP counter."""
    data = load_data(cfg, cfg.image_size, progress=False)
    idx = next(data.batches(cfg.batch_size, torch.Generator().manual_seed(0)))
    batch = data.batch(idx, cfg, torch.Generator().manual_seed(0), device=torch.device("cpu"))
    netG, netD = build_models(cfg)
    ema = copy.deepcopy(netG).eval() if cfg.ema_decay > 0 else None
    optG, optD = train.adam(netG.parameters(), cfg.lr_g, cfg), train.adam(netD.parameters(), cfg.lr_d, cfg)
    nets = train.wrap(netG, netD, ema, optG, optD, False, 1, torch.device("cpu"))
    with FlopCounterMode(display=False) as counter:
        train.train_step(nets, batch, cfg, 0, False)
    return counter.get_total_flops()


def test_bench_figures_agree_with_each_other_and_with_the_step(dfmm, tmp_path, monkeypatch):
    root, _ = dfmm
    step, calls = train.train_step, []
    assert bench.train_step is train.train_step  # bench.py times the training's own step

    def counted(nets, batch, cfg, *args):
        calls.append(batch[0].shape)
        return step(nets, batch, cfg, *args)

    monkeypatch.setattr(bench, "train_step", counted)
    out = tmp_path / "bench.json"
    steps, warmup = 3, 2
    r = bench.main(["--data_dir", str(root), "--gf_dim", "4", "--df_dim", "4", "--batch_size", "4",
                    "--steps", str(steps), "--warmup", str(warmup), "--naive_loader",
                    "--stages", "1", "--device", "cpu", "--n_images", "6", "--gen_batch", "4",
                    "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(r))

    # each timing (the cached data path and the naive one): warm-up, one counted step, the
    # timed steps, every one on a batch of 4 images of Stage I's size
    cfg = Config(data_dir=str(root), batch_size=4, gf_dim=4, df_dim=4, stage=1)
    assert calls == [(4, 3, cfg.image_size, cfg.image_size)] * 2 * (warmup + 1 + steps)

    flops = flops_of_one_step(cfg)
    for key in ("stage1_train", "stage1_train_naive"):
        t = saved[key]
        assert t["data_ms_per_step"] > 0 and t["step_ms_per_step"] > 0 and t["warmup_s"] > 0
        # on the CPU the images/s come from the same synchronised loop as the two timings
        ms_per_step = t["data_ms_per_step"] + t["step_ms_per_step"]
        assert t["images_per_s"] == pytest.approx(4 * 1000 / ms_per_step, rel=1e-9)
        assert t["data_share"] == pytest.approx(t["data_ms_per_step"] / ms_per_step, rel=1e-9)
        # the work of one step: the same networks, whatever the data path and number format
        assert t["gflop_per_image"] == pytest.approx(flops / 4 / 1e9, rel=1e-12)
        assert t["tflop_per_s"] == pytest.approx(t["gflop_per_image"] * t["images_per_s"] / 1000,
                                                 rel=1e-9)
    assert saved["stage1_generate_images_per_s"] > 0
    e2e = saved["end_to_end"]
    assert e2e["n_images"] == 6 and e2e["size"] == 256
    assert abs(e2e["total_s"] - (e2e["text_s"] + e2e["generate_s"] + e2e["png_s"])) < 1e-6
