"""Throughput figures for this machine.

    python bench.py                                   # built-in data, StackGAN default widths
    python bench.py --data_dir ../shared/data/clothing-small --cache_dir /tmp/cs_cache
    python bench.py --naive_loader                     # also time a per-sample PIL loader
    python bench.py --device cuda --batch_size 256 --compile y --json bench.json

Prints, for the current device:
  * Stage-I and Stage-II training of train.train_step, the step training runs: images/s,
    split into data time (batch assembly: "wrong" pairs, caption choice, gather,
    augmentation) and step time (G and D updates, EMA), the GFLOP of one image's step
    and the achieved TFLOP/s;
  * with --naive_loader, the straightforward pipeline beside it: a plain torch
    DataLoader that opens, decodes, crops and resizes every JPEG with Pillow on each
    access, feeding the same networks stepped in fp32 with the default memory layout;
  * generation images/s for each stage;
  * the end-to-end time to draw 500 images at 256x256 from 500 distinct prompts:
    text encoding + Stage I + Stage II + PNG writing;
  * with --app, the designers' page's request for 8 images at 256 px.
The models are freshly initialised (speed does not depend on the weights) unless
--net_g gives a Stage-II checkpoint for the end-to-end run.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from app import Studio, time_request
from config import (DEVICE, FIELD_RULES, PATH, TEXT, CliParser, Config, flag_type, stage_list,
                    whole)
from datasets import list_jobs, photo_path
from get_embeddings import encode_texts, load_data, load_text_model
from model import Stage1_G, Stage2_G, build_models
from sample import Drawer, load_generator, sample_images
from synthetic import ensure_synthetic
from train import StepStats, adam, adaptive_p, configure_device, train_step, wrap
from utils import UserError, _atomic_write, autocast, resolve_device, run_cli, to_uint8, use_bf16


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


class NaiveDataset(torch.utils.data.Dataset):
    """What a straightforward loader does: decode the JPEG of every sample (and of a
    random "wrong" one) with Pillow on each access, pad, resize, random crop and flip."""

    def __init__(self, cfg: Config, size: int):
        jobs, _, _ = list_jobs(cfg.resolved_data_dir(), cfg)
        self.jobs = [j for j in jobs if j.kind is not None and j.split != "validation"]
        self.root = cfg.resolved_data_dir()
        self.size = size
        self.load = int(size * 76 / 64)  # StackGAN: load at 76/64, random-crop back

    def __len__(self):
        return len(self.jobs)

    def _image(self, i):
        img = Image.open(photo_path(self.root, self.jobs[i])).convert("RGB")
        side = max(img.size)
        canvas = Image.new("RGB", (side, side), (255, 255, 255))
        canvas.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
        img = canvas.resize((self.load, self.load), Image.BICUBIC)
        x0, y0 = np.random.randint(0, self.load - self.size + 1, 2)
        img = img.crop((x0, y0, x0 + self.size, y0 + self.size))
        if np.random.rand() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float().div(127.5).sub(1)

    def __getitem__(self, i):
        return self._image(i), self._image(np.random.randint(len(self))), i


def train_throughput(cfg, data, device, steps, warmup, naive=None, workers=0):
    """Images/s of train.train_step, the step training runs (G and D updates, EMA, every
    loss switch of cfg), fed as training feeds it. Batch assembly ("data") and the step
    are timed apart, with a device synchronisation between them; on CUDA the images/s
    come from a second, unsynchronised run, as training runs. Also the work of one step
    (torch.utils.flop_counter, counted once) and the achieved TFLOP/s."""

    stage1 = Stage1_G(dataclasses.replace(cfg, stage=1)) if cfg.stage == 2 else None
    netG, netD = build_models(cfg, stage1)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    netG.to(device, memory_format=fmt).train()
    netD.to(device, memory_format=fmt).train()
    ema = copy.deepcopy(netG).eval() if cfg.ema_decay > 0 else None
    optG = adam([p for p in netG.parameters() if p.requires_grad], cfg.lr_g, cfg)
    optD = adam(netD.parameters(), cfg.lr_d, cfg)
    nets = wrap(netG, netD, ema, optG, optD, cfg.compile, 1, device, adaptive_p(cfg, device))
    bf16 = use_bf16(cfg.amp, device)
    if naive is None:
        data.to(device)
    rng = torch.Generator(device=data.device).manual_seed(0)
    batches = iter(())

    def next_batch():
        nonlocal batches
        if naive is None:
            idx = next(batches, None)
            if idx is None:
                batches = data.batches(cfg.batch_size, torch.Generator().manual_seed(0))
                idx = next(batches)
            return data.batch(idx, cfg, rng, device=device)
        real, wrong, _ = next(batches, (None, None, None))
        if real is None:
            batches = iter(torch.utils.data.DataLoader(naive, batch_size=cfg.batch_size,
                                                       shuffle=True, num_workers=workers,
                                                       drop_last=True))
            real, wrong, _ = next(batches)
        pick = torch.randint(len(data), (cfg.batch_size,), device=data.device)
        return real.to(device), wrong.to(device), data.emb[pick].to(device), data.labels[pick].to(device)

    meter = StepStats()
    sync(device)
    t = time.perf_counter()
    for i in range(warmup):  # includes compilation when --compile y
        meter.add(train_step(nets, next_batch(), cfg, i, bf16))
    meter.read(warmup)
    sync(device)
    warmup_s = time.perf_counter() - t
    flops = count_step_flops(cfg, wrap(netG, netD, ema, optG, optD, False, 1, device, nets.ada),
                             next_batch(), bf16)

    t_data = t_step = 0.0
    for i in range(steps):
        t0 = time.perf_counter()
        batch = next_batch()
        sync(device)
        t1 = time.perf_counter()
        meter.add(train_step(nets, batch, cfg, warmup + i, bf16))
        sync(device)
        t_data += t1 - t0
        t_step += time.perf_counter() - t1
    meter.read(warmup + steps)
    wall = t_data + t_step
    if device.type == "cuda":  # as training runs: no synchronisation between steps
        t = time.perf_counter()
        for i in range(steps):
            meter.add(train_step(nets, next_batch(), cfg, i, bf16))
        meter.read(steps)
        sync(device)
        wall = time.perf_counter() - t
    n = steps * cfg.batch_size
    return {"images_per_s": n / wall, "data_ms_per_step": 1000 * t_data / steps,
            "step_ms_per_step": 1000 * t_step / steps, "data_share": t_data / (t_data + t_step),
            "warmup_s": warmup_s, "gflop_per_image": flops / cfg.batch_size / 1e9,
            "tflop_per_s": flops * steps / wall / 1e12}


def count_step_flops(cfg, nets, batch, bf16: bool) -> float:
    """The floating-point operations of one train_step on the plain modules, counted
    once; NaN when torch's counter cannot follow the step (its module hooks refuse the
    double backward of a gradient penalty, --r1_gamma or --ma_gp)."""
    try:
        with FlopCounterMode(display=False) as counter:
            train_step(nets, batch, cfg, 0, bf16)
    except RuntimeError as e:
        if "autograd.grad" not in str(e):
            raise
        return float("nan")
    return counter.get_total_flops()


@torch.no_grad()
def gen_throughput(netG, cfg, device, batch, reps=3):
    bf16 = use_bf16(cfg.amp, device)
    emb = torch.randn(batch, cfg.text_dim, device=device)
    z = torch.randn(batch, cfg.z_dim, device=device)
    with autocast(device, bf16):
        netG(emb, z)
        sync(device)
        t = time.perf_counter()
        for _ in range(reps):
            netG(emb, z)
        sync(device)
    return batch * reps / (time.perf_counter() - t)


@torch.no_grad()
def end_to_end(netG, cfg, device, n_images, batch, out_dir):
    """500 distinct prompts -> text vectors -> Stage I -> Stage II -> PNG files."""
    colors = ["red", "blue", "navy", "green", "yellow", "black", "white", "pink", "purple",
              "orange", "grey", "beige"]
    things = ["short-sleeve T-shirt", "long-sleeve T-shirt", "short dress", "long dress",
              "long pants", "cropped pants", "leggings", "pair of sneakers", "pair of ankle boots"]
    patterns = ["pure color", "striped", "dotted", "checked", "floral"]
    prompts = [f"A {c} {t} with {p} patterns, design {i}." for i, (c, t, p) in enumerate(
        (colors[i % 12], things[(i // 12) % 9], patterns[(i // 108) % 5]) for i in range(n_images))]
    assert len(set(prompts)) == n_images
    load_text_model(cfg.text_model)  # loading the model is set-up, not per-request work
    t0 = time.perf_counter()
    emb = torch.from_numpy(encode_texts(prompts, cfg.text_model, batch_size=128)).to(device)
    t1 = time.perf_counter()
    images = sample_images(netG, emb, 1, seed=0, batch=batch, bf16=use_bf16(cfg.amp, device))
    sync(device)
    t2 = time.perf_counter()
    pix = to_uint8(images)

    def write(i):  # as the page writes its images
        _atomic_write(out_dir / f"{i:04d}.png", lambda f: Image.fromarray(pix[i]).save(
            f, format="PNG", compress_level=1), sync=False)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(write, range(n_images)))
    t3 = time.perf_counter()
    return {"n_images": n_images, "size": images.shape[-1], "text_s": t1 - t0,
            "generate_s": t2 - t1, "png_s": t3 - t2, "total_s": t3 - t0}


def build_parser() -> CliParser:
    p = CliParser(description="Training and generation throughput.",
                  formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    field = lambda name: flag_type(FIELD_RULES[name])  # noqa: E731  the Config field's range
    p.add_argument("--data_dir", default=None, type=field("data_dir"),
                   help="default: the built-in synthetic data")
    p.add_argument("--cache_dir", default=None, type=field("cache_dir"))
    p.add_argument("--embeddings_path", default=None, type=field("embeddings_path"))
    p.add_argument("--device", default="auto", type=flag_type(DEVICE))
    p.add_argument("--batch_size", type=field("batch_size"), default=64)
    p.add_argument("--gf_dim", type=field("gf_dim"), default=128)
    p.add_argument("--df_dim", type=field("df_dim"), default=64)
    p.add_argument("--amp", default="auto", type=field("amp"), help="bf16 autocast: auto | on | off")
    p.add_argument("--channels_last", type=field("channels_last"), default=True,
                   help="y: NHWC layout")
    p.add_argument("--compile", type=field("compile"), default=False,
                   help="y: torch.compile G and D (compilation is timed apart, as warm-up)")
    p.add_argument("--steps", type=flag_type(whole(1, 100_000)), default=8,
                   help="timed steps per measurement")
    p.add_argument("--warmup", type=flag_type(whole(0, 100_000)), default=2)
    p.add_argument("--naive_loader", dest="naive", action="store_true",
                   help="also time a per-sample PIL-decoding DataLoader beside the cache")
    p.add_argument("--naive_workers", type=flag_type(whole(0, 256)), default=0)
    p.add_argument("--stages", default="1,2", type=stage_list, help="which stages to time")
    p.add_argument("--n_images", type=flag_type(whole(0, 1_000_000)), default=500,
                   help="end-to-end image count (0: skip)")
    p.add_argument("--gen_batch", type=flag_type(whole(1, 65536)), default=100)
    p.add_argument("--net_g", default=None, type=flag_type(PATH),
                   help="Stage-II checkpoint for the end-to-end run")
    p.add_argument("--json", default="bench.json", type=flag_type(TEXT),
                   help="where to write the figures")
    p.add_argument("--app", action="store_true",
                   help="also time the web page's request handler (app.py): 8 images at 256px "
                        "for one prompt, text encoding to PNG and zip files")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)

    base = Config(data_dir=args.data_dir, cache_dir=args.cache_dir,
                  embeddings_path=args.embeddings_path, batch_size=args.batch_size,
                  gf_dim=args.gf_dim, df_dim=args.df_dim, amp=args.amp,
                  channels_last=args.channels_last, compile=args.compile).validate()
    device = resolve_device(args.device)
    configure_device(base, device)
    if base.data_dir is None:
        ensure_synthetic(base.builtin_dir, n_per_kind=base.builtin_per_kind)
    bf16 = use_bf16(base.amp, device)
    results = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
               "bf16": bf16, "channels_last": base.channels_last, "compile": base.compile,
               "batch_size": base.batch_size,
               "gf_dim": base.gf_dim, "df_dim": base.df_dim}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {device} ({name}), {results['threads']} threads, bf16 {bf16}, "
          f"batch {base.batch_size}, gf_dim {base.gf_dim}, df_dim {base.df_dim}")

    for stage in args.stages:
        cfg = dataclasses.replace(base, stage=stage)
        data = load_data(cfg, cfg.image_size, progress=True)
        if len(data) < cfg.batch_size:
            raise UserError(f"{len(data)} usable images, fewer than a batch of --batch_size "
                            f"{cfg.batch_size}: lower it or use more data")
        r = train_throughput(cfg, data, device, args.steps, args.warmup)
        results[f"stage{stage}_train"] = r
        print(f"stage {stage} train ({cfg.image_size}px): {r['images_per_s']:.1f} img/s | data "
              f"{r['data_ms_per_step']:.1f} ms/step ({100 * r['data_share']:.1f}%) | step "
              f"{r['step_ms_per_step']:.1f} ms/step | {r['gflop_per_image']:.2f} GFLOP/image, "
              f"{r['tflop_per_s']:.2f} TFLOP/s | warm-up {r['warmup_s']:.1f} s")
        if args.naive:
            # the straightforward pipeline: Pillow decoding per sample in a DataLoader, and
            # the same networks stepped in plain fp32 with the default memory layout
            naive = NaiveDataset(cfg, cfg.image_size)
            plain = dataclasses.replace(cfg, amp="off", channels_last=False, compile=False)
            r = train_throughput(plain, data, device, args.steps, args.warmup, naive,
                                 args.naive_workers)
            results[f"stage{stage}_train_naive"] = r
            fast = results[f"stage{stage}_train"]
            print(f"stage {stage} train, naive (PIL DataLoader with {args.naive_workers} workers, "
                  f"fp32 NCHW): {r['images_per_s']:.1f} img/s | data {r['data_ms_per_step']:.1f} "
                  f"ms/step ({100 * r['data_share']:.1f}%) | this repo is "
                  f"{fast['images_per_s'] / r['images_per_s']:.2f}x faster, its data path "
                  f"{r['data_ms_per_step'] / fast['data_ms_per_step']:.1f}x faster")
        g1 = Stage1_G(cfg).to(device, memory_format=torch.channels_last if cfg.channels_last
                              else torch.contiguous_format).eval()
        g = g1 if stage == 1 else Stage2_G(cfg, g1).to(device).eval()
        if cfg.channels_last:
            g.to(memory_format=torch.channels_last)
        ips = gen_throughput(g, cfg, device, args.gen_batch)
        results[f"stage{stage}_generate_images_per_s"] = ips
        print(f"stage {stage} generation ({cfg.image_size}px): {ips:.1f} img/s")

    if args.n_images:
        cfg = dataclasses.replace(base, stage=2)
        if args.net_g:
            g, cfg, _ = load_generator(args.net_g, device, expect_stage=2)
            cfg = dataclasses.replace(cfg, amp=base.amp, channels_last=base.channels_last)
        else:
            g = Stage2_G(cfg, Stage1_G(cfg)).to(device).eval()
        if cfg.channels_last:
            g.to(memory_format=torch.channels_last)
        with tempfile.TemporaryDirectory() as tmp:
            r = end_to_end(g, cfg, device, args.n_images, args.gen_batch, Path(tmp))
        results["end_to_end"] = r
        print(f"end to end: {r['n_images']} images at {r['size']}px from {r['n_images']} prompts in "
              f"{r['total_s']:.1f} s (text {r['text_s']:.1f} s, generation {r['generate_s']:.1f} s, "
              f"PNG {r['png_s']:.1f} s)")
    if args.app:
        if args.net_g:
            drawer = Drawer.load(args.net_g, device, 2, base.amp, base.channels_last)
        else:
            cfg = dataclasses.replace(base, stage=2)
            drawer = Drawer(Stage2_G(cfg, Stage1_G(cfg)), cfg, device, base.amp,
                            base.channels_last)
        with tempfile.TemporaryDirectory() as tmp:
            r = time_request(Studio(tmp, drawer=drawer), n=8)
        results["app_request"] = r
        print(f"page request: {r['n_images']} images at {r['size']}px for one prompt in "
              f"{r['total_s']:.2f} s (median of {len(r['runs_total_s'])}; text and drawing "
              f"{r['draw_s']:.2f} s, PNG and zip {r['png_s']:.2f} s)")
    _atomic_write(Path(args.json), lambda f: f.write(json.dumps(results, indent=2).encode()))
    print(f"figures written to {args.json}")
    return results


if __name__ == "__main__":
    sys.exit(run_cli(main))
