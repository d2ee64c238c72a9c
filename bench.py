"""Throughput figures for this machine.

    python bench.py                                   # built-in data, StackGAN default widths
    python bench.py --data_dir ../shared/data/clothing-small --cache_dir /tmp/cs_cache
    python bench.py --naive-loader                     # also time a per-sample PIL loader
    python bench.py --device cuda --batch_size 128 --json bench.json

Prints, for the current device:
  * Stage-I and Stage-II training: images/s, split into data time (batch assembly:
    cache read, "wrong" pairs, augmentation, host->device copy) and step time (G and D
    updates);
  * with --naive-loader, the straightforward pipeline beside it: a plain torch
    DataLoader that opens, decodes, crops and resizes every JPEG with Pillow on each
    access, feeding the same networks stepped in fp32 with the default memory layout;
  * generation images/s for each stage;
  * the end-to-end time to draw 500 images at 256x256 from 500 distinct prompts:
    text encoding + Stage I + Stage II + PNG writing.
The models are freshly initialised (speed does not depend on the weights) unless
--net_g gives a Stage-II checkpoint for the end-to-end run.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from config import Config
from datasets import augment, list_jobs, load_data
from model import Stage1_G, Stage2_G, build_models
from utils import (autocast, discriminator_loss, generator_loss, requires_grad, resolve_device,
                   to_uint8, use_bf16)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


class NaiveDataset(torch.utils.data.Dataset):
    """What a straightforward loader does: decode the JPEG of every sample (and of a
    random "wrong" one) with Pillow on each access, pad, resize, random crop and flip."""

    def __init__(self, cfg: Config, size: int):
        jobs, _, _ = list_jobs(cfg.resolved_data_dir(), cfg)
        self.jobs = [j for j in jobs if j.kind is not None and j.split != "validation"]
        self.root = cfg.resolved_data_dir() / "images"
        self.size = size
        self.load = int(size * 76 / 64)  # StackGAN: load at 76/64, random-crop back

    def __len__(self):
        return len(self.jobs)

    def _image(self, i):
        img = Image.open(self.root / self.jobs[i].image).convert("RGB")
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
    """Images/s of the training step, with data and step time measured apart."""
    stage1 = Stage1_G(dataclasses.replace(cfg, stage=1)) if cfg.stage == 2 else None
    netG, netD = build_models(cfg, stage1)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    netG.to(device, memory_format=fmt).train()
    netD.to(device, memory_format=fmt).train()
    optG = torch.optim.Adam([p for p in netG.parameters() if p.requires_grad], cfg.lr_g,
                            betas=(cfg.beta1, cfg.beta2))
    optD = torch.optim.Adam(netD.parameters(), cfg.lr_d, betas=(cfg.beta1, cfg.beta2))
    bf16 = use_bf16(cfg.amp, device)
    gen = torch.Generator().manual_seed(0)
    if naive is not None:
        loader = iter(torch.utils.data.DataLoader(naive, batch_size=cfg.batch_size, shuffle=True,
                                                  num_workers=workers, drop_last=True))
        emb_all, labels_all = data.emb, data.labels

    def next_batch():
        nonlocal loader
        if naive is None:
            idx = next(data.batches(cfg.batch_size, gen))
            return data.batch(idx, cfg, gen, device=device)
        try:
            real, wrong, _ = next(loader)
        except StopIteration:
            loader = iter(torch.utils.data.DataLoader(naive, batch_size=cfg.batch_size, shuffle=True,
                                                      num_workers=workers, drop_last=True))
            real, wrong, _ = next(loader)
        pick = torch.randint(len(emb_all), (cfg.batch_size,))
        return real.to(device), wrong.to(device), emb_all[pick].to(device), labels_all[pick].to(device)

    t_data = t_step = 0.0
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        real, wrong, emb, labels = next_batch()
        real, wrong = real.contiguous(memory_format=fmt), wrong.contiguous(memory_format=fmt)
        sync(device)
        t1 = time.perf_counter()
        z = torch.randn(cfg.batch_size, cfg.z_dim, device=device)
        with autocast(device, bf16):
            fake, mu, logvar = netG(emb, z)
        d_cond = emb if cfg.d_cond == "text" else mu
        requires_grad(netD, True)
        optD.zero_grad(set_to_none=True)
        with autocast(device, bf16):
            d_loss, _ = discriminator_loss(netD, real, wrong, fake, d_cond, labels=labels,
                                           aux_coef=cfg.aux_coef)
        d_loss.backward()
        optD.step()
        requires_grad(netD, False)
        optG.zero_grad(set_to_none=True)
        with autocast(device, bf16):
            g_loss, _ = generator_loss(netD, fake, d_cond, mu, logvar, cfg.kl_coef, labels=labels,
                                       aux_coef=cfg.aux_coef)
        g_loss.backward()
        optG.step()
        sync(device)
        t2 = time.perf_counter()
        if i >= warmup:
            t_data += t1 - t0
            t_step += t2 - t1
    n = steps * cfg.batch_size
    return {"images_per_s": n / (t_data + t_step), "data_ms_per_step": 1000 * t_data / steps,
            "step_ms_per_step": 1000 * t_step / steps, "data_share": t_data / (t_data + t_step)}


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
    from get_embeddings import encode_texts, load_text_model
    from main import sample_images
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
    out_dir.mkdir(parents=True, exist_ok=True)

    def write(i):
        Image.fromarray(pix[i]).save(out_dir / f"{i:04d}.png", compress_level=1)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(write, range(n_images)))
    t3 = time.perf_counter()
    return {"n_images": n_images, "size": images.shape[-1], "text_s": t1 - t0,
            "generate_s": t2 - t1, "png_s": t3 - t2, "total_s": t3 - t0}


def main(argv=None):
    p = argparse.ArgumentParser(description="Training and generation throughput.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data_dir", default=None, help="default: the built-in synthetic data")
    p.add_argument("--cache_dir", default=None)
    p.add_argument("--embeddings_path", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--gf_dim", type=int, default=128)
    p.add_argument("--df_dim", type=int, default=64)
    p.add_argument("--amp", default="auto", help="bf16 autocast: auto | on | off")
    p.add_argument("--channels_last", type=int, default=1)
    p.add_argument("--steps", type=int, default=8, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--naive-loader", dest="naive", action="store_true",
                   help="also time a per-sample PIL-decoding DataLoader beside the cache")
    p.add_argument("--naive_workers", type=int, default=0)
    p.add_argument("--stages", default="1,2", help="which stages to time")
    p.add_argument("--n_images", type=int, default=500, help="end-to-end image count (0: skip)")
    p.add_argument("--gen_batch", type=int, default=100)
    p.add_argument("--net_g", default=None, help="Stage-II checkpoint for the end-to-end run")
    p.add_argument("--json", default="bench.json", help="where to write the figures")
    p.add_argument("--app", action="store_true",
                   help="also time the web page's request handler (app.py): 8 images at 256px "
                        "for one prompt, text encoding to PNG and zip files")
    args = p.parse_args(argv)

    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    base = Config(data_dir=args.data_dir, cache_dir=args.cache_dir,
                  embeddings_path=args.embeddings_path, batch_size=args.batch_size,
                  gf_dim=args.gf_dim, df_dim=args.df_dim, amp=args.amp,
                  channels_last=bool(args.channels_last))
    if base.data_dir is None:
        from synthetic import ensure_synthetic
        ensure_synthetic(base.builtin_dir, n_per_kind=base.builtin_per_kind)
    bf16 = use_bf16(base.amp, device)
    results = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
               "bf16": bf16, "channels_last": base.channels_last, "batch_size": base.batch_size,
               "gf_dim": base.gf_dim, "df_dim": base.df_dim}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {device} ({name}), {results['threads']} threads, bf16 {bf16}, "
          f"batch {base.batch_size}, gf_dim {base.gf_dim}, df_dim {base.df_dim}")

    for stage in [int(s) for s in args.stages.split(",") if s]:
        cfg = dataclasses.replace(base, stage=stage)
        data = load_data(cfg, cfg.image_size, progress=True)
        r = train_throughput(cfg, data, device, args.steps, args.warmup)
        results[f"stage{stage}_train"] = r
        print(f"stage {stage} train ({cfg.image_size}px): {r['images_per_s']:.1f} img/s | data "
              f"{r['data_ms_per_step']:.1f} ms/step ({100 * r['data_share']:.1f}%) | step "
              f"{r['step_ms_per_step']:.1f} ms/step")
        if args.naive:
            # the straightforward pipeline: Pillow decoding per sample in a DataLoader, and
            # the same networks stepped in plain fp32 with the default memory layout
            naive = NaiveDataset(cfg, cfg.image_size)
            plain = dataclasses.replace(cfg, amp="off", channels_last=False)
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
            from main import load_generator
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
        from app import Studio, time_request
        from main import Drawer
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
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"figures written to {args.json}")
    return results


if __name__ == "__main__":
    main()
