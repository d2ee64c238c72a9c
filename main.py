"""Train StackGAN on fashion images, or generate garments from text.

    python main.py --train y --stage 1                    # Stage I on the built-in data
    python main.py --train y --stage 1 --data_dir DFMM    # Stage I on DeepFashion-MultiModal
    python main.py --train y --stage 2 --data_dir DFMM --stage1_g output/stage1/last.pt
    python main.py --train n --prompt "red dress with lace" --prompt "black leggings"

One training loop serves both stages: the stage decides which G/D pair is built and
which cached image size is read. Every config.Config field is also a flag
(`--gf_dim 64`, `--lr_decay_epoch 10`, ...); `python main.py -h` lists them all.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import re
import signal
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from config import (ARCH_FIELDS, BUILTIN_PRESET, FIELD_RULES, KINDS, CliParser, Config,
                    flag_type, yes_no)
from utils import (LossLog, UserError, accumulate, autocast, check_arch, check_writable_dir,
                   clean_text, discriminator_loss, first_line, generator_loss, has_surrogates,
                   init_wandb, load_checkpoint,
                   requires_grad, resolve_device, run_cli, save_checkpoint, save_grid, set_seed,
                   standing_stats, to_uint8, use_bf16)

DEFAULT_PROMPTS = [  # short typed prompts and DFMM-style sentences, two per kind
    "a red T-shirt",
    "The gentleman wears a long-sleeve T-shirt with striped patterns. The T-shirt is white.",
    "a green floral dress",
    "The lady wears a short dress. The dress is black. It has pure color patterns.",
    "a pair of navy pants",
    "a pair of beige plaid pants",
    "a pair of black leggings",
    "The lady wears a pair of ankle leggings. The leggings are purple with dotted patterns.",
    "a pair of white shoes",
    "This lady wears a pair of ankle boots. The shoes are brown.",
]
MIN_BATCH = FIELD_RULES["batch_size"].lo  # BatchNorm needs two images to train on
DEBUG = dict(epochs=1, max_samples=64, batch_size=16, gf_dim=8, df_dim=8, snapshot_interval=1,
             builtin_per_kind=20, builtin_dir="data/synthetic_debug", n_samples=4, log_interval=1)


# ---------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    p = CliParser(description="Text-to-fashion StackGAN: train or generate.",
                  formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--train", type=yes_no, default=True, help="y: train; n: generate sample grids")
    p.add_argument("--stage", type=int, choices=(1, 2), default=None,
                   help="1: 64px Stage I; 2: 256px Stage II (training default 1; generation: "
                        "the checkpoint's)")
    path = flag_type(FIELD_RULES["data_dir"])  # a file or folder name
    p.add_argument("--data_dir", default=None, type=path,
                   help="DFMM-layout folder; omitted: the built-in synthetic garments")
    p.add_argument("--stage1_g", default=None, type=path,
                   help="Stage-I checkpoint (required for Stage II)")
    p.add_argument("--net_g", default=None, type=path,
                   help="generator checkpoint for --train n (default: OUT_DIR/stage2/last.pt, "
                        "else OUT_DIR/stage1/last.pt)")
    p.add_argument("--prompt", action="append", default=None,
                   help="text to draw (repeatable); default: one prompt set covering all kinds")
    p.add_argument("--prompts_file", default=None, type=path, help="file with one prompt per line")
    p.add_argument("--sweep", choices=("colour", "pattern"), default=None,
                   help="prompts that vary one attribute of one garment: eight colours, or five "
                        "patterns (with --sweep_kind)")
    p.add_argument("--sweep_kind", choices=KINDS, default="dress", help="the garment of --sweep")
    p.add_argument("--resume", default=None, metavar="PATH|auto", type=path,
                   help="continue training from a checkpoint (auto: OUT_DIR/stage<N>/last.pt)")
    p.add_argument("--debug", action="store_true", help="a tiny run for smoke tests")
    p.add_argument("--wandb", dest="wandb_mode", choices=("online", "offline", "disabled"),
                   default=None, help="WandB mode (default: offline unless WANDB_API_KEY is set)")
    given = {a.dest for a in p._actions}
    for f in dataclasses.fields(Config):
        if f.name in given or f.type not in ("int", "float", "str", "bool", "Optional[str]"):
            continue
        p.add_argument(f"--{f.name}", type=flag_type(FIELD_RULES[f.name]), default=None,
                       help=f"(config, default {f.default!r})")
    return p


def make_config(args) -> tuple[Config, set]:
    """Config from defaults <- presets <- explicit flags. Returns it and the flags given."""
    names = {f.name for f in dataclasses.fields(Config)}
    explicit = {k: v for k, v in vars(args).items() if k in names and v is not None}
    values = {}
    if args.data_dir is None:
        values.update(BUILTIN_PRESET)
    if args.debug:
        values.update(DEBUG)
    values.update(explicit)
    return Config(**values).validate(), set(explicit)


# ---------------------------------------------------------------------------- models

def load_generator(path, device, expect_stage=None):
    """(G in eval mode, its Config, the checkpoint dict) from a checkpoint file."""
    from model import Stage1_G, Stage2_G
    state = load_checkpoint(path)
    cfg = Config.from_dict(state["config"])
    if expect_stage is not None and cfg.stage != expect_stage:
        raise UserError(f"{path} holds a Stage-{cfg.stage} generator, a Stage-{expect_stage} "
                        "one is needed here")
    if cfg.stage == 1:
        g = Stage1_G(cfg)
    else:
        s1cfg = Config.from_dict(state["stage1_config"])
        g = Stage2_G(cfg, Stage1_G(s1cfg))
    try:
        g.load_state_dict(state.get("netG_ema") or state["netG"])
    except RuntimeError as e:
        raise UserError(f"{path}: the weights do not fit the model its config describes "
                        f"({first_line(e)})") from None
    return g.to(device).eval(), cfg, state


# -------------------------------------------------------------------------- training

def snapshot_rows(data, per_kind: int = 2):
    """Sample indices for the fixed snapshot grid: the first `per_kind` of each kind."""
    rows, seen = [], {}
    for i, k in enumerate(data.kinds):
        if seen.get(k, 0) < per_kind:
            rows.append(i)
            seen[k] = seen.get(k, 0) + 1
    order = {k: n for n, k in enumerate(KINDS)}
    return sorted(rows, key=lambda i: order.get(data.kinds[i], 99))


@torch.no_grad()
def write_snapshot(netG, data, rows, noise, path, stage: int):
    """Grid: per caption row, the real image then the generated ones (Stage II: each
    256px image follows its Stage-I 64px draft)."""
    was_training = netG.training
    netG.eval()
    dev = noise.device
    emb = data.emb[rows].to(dev)
    n = noise.size(1)
    cols = [data.pixels(rows).to(dev)]
    size = cols[0].shape[-1]
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(1234)  # the same condition samples at every snapshot
        for k in range(n):
            if stage == 2:
                img, _, _, low = netG(emb, noise[:, k], return_stage1=True)
                cols.append(F.interpolate(low, size=size, mode="nearest"))
            else:
                img, _, _ = netG(emb, noise[:, k])
            cols.append(img)
    grid = torch.stack(cols, 1).flatten(0, 1)
    labels = [f"{data.kinds[i]}: {data.captions[i][0]}" for i in rows]
    save_grid(grid, path, nrow=len(cols), row_labels=labels)
    netG.train(was_training)


def resolve_resume(resume, out: Path):
    """--resume PATH|auto -> a checkpoint path or None (auto with nothing to resume)."""
    if not resume:
        return None
    if resume == "auto":
        path = out / "last.pt"
        if not path.is_file():
            print(f"--resume auto: no {path} yet, starting from scratch")
            return None
        return path
    return Path(resume)


def configure_device(cfg: Config, device: torch.device):
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
        torch.backends.cudnn.allow_tf32 = cfg.tf32
        torch.backends.cudnn.benchmark = True


def rng_state(gen: torch.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "gen": gen.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, gen: torch.Generator):
    torch.set_rng_state(state["torch"])
    try:
        gen.set_state(state["gen"])
    except RuntimeError:  # saved on another kind of device: that stream starts afresh
        print("note: the checkpoint's data random state is of another device; not restored")
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class StopSignal:
    """SIGINT/SIGTERM set a flag; the loop finishes its step, checkpoints and exits 0."""

    def __init__(self):
        self.flag, self.old = False, {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        if not self.flag:
            print(f"\n{signal.Signals(signum).name}: finishing this step, then saving a checkpoint")
        self.flag = True

    def __exit__(self, *exc):
        for sig, old in self.old.items():
            signal.signal(sig, old)


def train(cfg: Config, explicit: set, stage1_path=None, resume=None) -> dict:
    """One loop for both stages. Returns {"checkpoint": path, "netG", "netD", "netG_ema",
    "step"} (the modules of this rank, unwrapped)."""
    import distributed as dist
    from datasets import load_data, prepare
    from model import Stage1_G, build_models

    rank, world, ddp_device = dist.setup(cfg.device)
    main_proc = rank == 0
    device = ddp_device or resolve_device(cfg.device)
    configure_device(cfg, device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    out = Path(cfg.out_dir) / f"stage{cfg.stage}"
    if main_proc:
        check_writable_dir(out)

    resume_path = resolve_resume(resume, out)
    state = None
    if resume_path is not None:
        state = load_checkpoint(resume_path, resume=True)
        saved = Config.from_dict(state["config"])
        if saved.stage != cfg.stage:
            raise UserError(f"{resume_path} is a Stage-{saved.stage} checkpoint; this run trains "
                            f"Stage {cfg.stage}")
        # settings given on the command line must fit the checkpoint's networks
        check_arch({k: getattr(saved, k) for k in ARCH_FIELDS if k in explicit}, cfg, resume_path)
        # the run's settings come from the checkpoint, except flags given now; a step
        # limit only ever applies to the invocation it was given to
        cfg = dataclasses.replace(saved, **{**{k: getattr(cfg, k) for k in explicit},
                                            "max_steps": cfg.max_steps})

    stage1_g, stage1_cfg = None, None
    if cfg.stage == 2 and state is not None:
        stage1_cfg = Config.from_dict(state["stage1_config"])
        stage1_g = Stage1_G(stage1_cfg)  # its weights come with the Stage-II G below
    elif cfg.stage == 2:
        if not stage1_path:
            raise UserError("Stage II refines a trained Stage-I generator: pass --stage1_g "
                            "PATH (e.g. output/stage1/last.pt from `--train y --stage 1`)")
        stage1_g, stage1_cfg, _ = load_generator(stage1_path, "cpu", expect_stage=1)
        if stage1_cfg.text_model != cfg.text_model:
            raise UserError(f"{stage1_path} was trained with text model {stage1_cfg.text_model!r}, "
                            f"this run uses {cfg.text_model!r}")
        shared = ("stage1_size", "z_dim", "condition_dim", "text_dim")
        cfg = dataclasses.replace(cfg, **{k: getattr(stage1_cfg, k) for k in shared
                                          if k not in explicit})
        check_arch({k: getattr(stage1_cfg, k) for k in shared}, cfg, stage1_path)

    if main_proc:  # rank 0 prepares the data once; the others then read its caches
        if cfg.data_dir is None:
            from synthetic import ensure_synthetic
            print(f"no --data_dir: using the built-in synthetic garments in {cfg.builtin_dir}")
            ensure_synthetic(cfg.builtin_dir, n_per_kind=cfg.builtin_per_kind, seed=0)
        prepare(cfg, cfg.image_size)
    dist.barrier()
    data = load_data(cfg, cfg.image_size, progress=main_proc)
    if main_proc:
        counts = ", ".join(f"{k} {data.kinds.count(k)}" for k in KINDS)
        print(f"stage {cfg.stage}: {len(data)} training images ({counts})")
    if len(data) < cfg.batch_size * world:
        if len(data) < MIN_BATCH * world:
            raise UserError(f"{len(data)} usable training image{'s'[:len(data) != 1]}: a batch "
                            f"needs at least {MIN_BATCH} per process ({MIN_BATCH * world} "
                            f"here), so nothing would train; add images or check the skipped "
                            "ones (python datasets.py --data_dir DIR)")
        cfg = dataclasses.replace(cfg, batch_size=len(data) // world)
        print(f"fewer images than a batch: batch size set to {cfg.batch_size}")

    set_seed(cfg.seed)  # identical initial weights on every rank
    netG, netD = build_models(cfg, stage1_g)
    netG_ema = copy.deepcopy(netG).eval() if cfg.ema_decay > 0 else None
    if netG_ema is not None:
        requires_grad(netG_ema, False)
    g_params = [p for p in netG.parameters() if p.requires_grad]
    optG, optD = adam(g_params, cfg.lr_g, cfg), adam(netD.parameters(), cfg.lr_d, cfg)
    schedG = torch.optim.lr_scheduler.StepLR(optG, cfg.lr_decay_epoch, gamma=0.5)
    schedD = torch.optim.lr_scheduler.StepLR(optD, cfg.lr_decay_epoch, gamma=0.5)
    torch.manual_seed(cfg.seed + rank)  # noise and condition samples differ per rank
    start_epoch, start_batch, step = 0, 0, 0
    if state is not None:
        try:
            netG.load_state_dict(state["netG"])
            netD.load_state_dict(state["netD"])
            if netG_ema is not None:
                netG_ema.load_state_dict(state.get("netG_ema") or state["netG"])
            for obj, key in ((optG, "optG"), (optD, "optD"), (schedG, "schedG"), (schedD, "schedD")):
                obj.load_state_dict(state[key])
        except (RuntimeError, KeyError, TypeError, ValueError, AttributeError) as e:
            raise UserError(f"cannot resume from {resume_path}: its state does not fit this "
                            f"run ({first_line(e)})") from None
        start_epoch, start_batch, step = state["epoch"], state.get("batch", 0), state["step"]
        print(f"resumed from {resume_path} at epoch {start_epoch + 1}, step {step}")

    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    for m in (netG, netD, netG_ema):
        if m is not None:
            m.to(device, memory_format=fmt)
    for opt in (optG, optD):  # optimizer state follows the parameters' (fused Adam: its step too)
        for st in opt.state.values():
            for k, v in st.items():
                if torch.is_tensor(v):
                    st[k] = v.to(device)
    netG.train()
    netD.train()
    nets = wrap(netG, netD, netG_ema, optG, optD, cfg.compile, world, device)
    data.to(device)  # CUDA: the image cache and every table on the device when they fit
    gen = torch.Generator(device=data.device).manual_seed(cfg.seed + rank)  # augmentation, "wrong" pairs
    if state is not None and state.get("rng") and world == 1:
        try:
            set_rng_state(state["rng"], gen)
        except (RuntimeError, KeyError, TypeError, ValueError) as e:
            raise UserError(f"cannot resume from {resume_path}: its random state does not fit "
                            f"this run ({first_line(e)})") from None
    bf16 = use_bf16(cfg.amp, device)
    if main_proc:
        print(f"device {device}, bf16 autocast {'on' if bf16 else 'off'}, "
              f"{'channels-last' if cfg.channels_last else 'contiguous'} layout, image cache on "
              f"{'the device' if data.device_images is not None else 'the host'}"
              + (f", {world} processes" if world > 1 else ""))

    run = None
    if main_proc:
        run = init_wandb(cfg, f"train-stage{cfg.stage}", out,
                         run_id=state.get("wandb_id") if state else None)
    log = LossLog(out / "losses.csv", run, truncate_after=step if state else 0) if main_proc else None
    rows = snapshot_rows(data)
    fixed_noise = torch.randn(len(rows), 4 if cfg.stage == 1 else 2, cfg.z_dim,
                              generator=torch.Generator().manual_seed(cfg.seed + 999)).to(device)
    last = out / "last.pt"

    def save(epoch, batch, tag):
        """Refresh the EMA generator's BatchNorm statistics, then write last.pt, a tagged
        copy and the sample grid (rank 0; every rank first takes rank 0's buffers)."""
        dist.sync_buffers(netG, netD, netG_ema)
        if not main_proc:
            return
        if netG_ema is not None:
            standing_stats(netG_ema, data.text_emb, n_batches=16, batch_size=cfg.batch_size,
                           seed=cfg.seed, bf16=bf16)
        ckpt = {"netG": netG.state_dict(), "netD": netD.state_dict(),
                "netG_ema": netG_ema.state_dict() if netG_ema is not None else None,
                "optG": optG.state_dict(), "optD": optD.state_dict(),
                "schedG": schedG.state_dict(), "schedD": schedD.state_dict(),
                "epoch": epoch, "batch": batch, "step": step, "rng": rng_state(gen),
                "config": cfg.to_dict(), "wandb_id": run.id if run is not None else None,
                "stage1_config": stage1_cfg.to_dict() if stage1_cfg else None}
        save_checkpoint(ckpt, out / "checkpoints" / f"{tag}.pt")
        save_checkpoint(ckpt, last)
        with autocast(device, bf16):
            write_snapshot(netG if netG_ema is None else netG_ema, data, rows, fixed_noise,
                           out / "samples" / f"{tag}.png", cfg.stage)
        log.log_image(step, out / "samples" / f"{tag}.png")
        log.flush()

    steps_per_epoch = len(data) // (cfg.batch_size * world)
    meter = StepStats()
    t0 = time.time()
    stopped = False
    try:
        with StopSignal() as stop:
            for epoch in range(start_epoch, cfg.epochs):
                perm_gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
                batches = data.batches(cfg.batch_size, perm_gen, rank, world)
                skip = start_batch if epoch == start_epoch else 0
                bar = tqdm(batches, total=steps_per_epoch, disable=not main_proc, unit="step",
                           desc=f"stage {cfg.stage} epoch {epoch + 1}/{cfg.epochs}")
                for i, idx in enumerate(bar):
                    if i < skip:
                        continue
                    meter.add(train_step(nets, data.batch(idx, cfg, gen, device=device), cfg,
                                         step, bf16))
                    step += 1
                    stopped = dist.any_flag(stop.flag or 0 < cfg.max_steps <= step, device)
                    if step % cfg.log_interval == 0 or i + 1 == steps_per_epoch or stopped:
                        stats = meter.read(step)  # the only wait for the device; raises on NaN
                        if main_proc:
                            log.log(step, {**stats, "lr_g": optG.param_groups[0]["lr"],
                                           "epoch": epoch + 1})
                            bar.set_postfix(d=f"{stats['d_loss']:.3f}", g=f"{stats['g_adv']:.3f}",
                                            kl=f"{stats['kl']:.4f}")
                    if stopped:
                        save(epoch, i + 1, "interrupted")
                        break
                if stopped:
                    break
                with warnings.catch_warnings():  # resumed exactly at an epoch's end
                    warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                    schedG.step()
                    schedD.step()
                if (epoch + 1) % cfg.snapshot_interval == 0 or epoch + 1 == cfg.epochs:
                    save(epoch + 1, 0, f"epoch_{epoch + 1:04d}")
    except Diverged as e:
        have = last.is_file() and main_proc
        raise UserError(f"training diverged at step {e.step} (non-finite loss: {e.stats}); "
                        + (f"the last good checkpoint {last} was kept" if have else
                           "no checkpoint had been written yet")
                        + "; try a lower --lr_g/--lr_d") from None
    finally:
        if main_proc:
            log.flush()
            if run is not None:
                run.finish()
        dist.cleanup()
    if stopped:
        if main_proc:
            print(f"stopped at epoch {epoch + 1}, step {step}; checkpoint {last}. Resume with: "
                  f"python main.py --train y --stage {cfg.stage} --out_dir {cfg.out_dir} "
                  f"--resume {last}" + (f" --data_dir {cfg.data_dir}" if cfg.data_dir else ""))
    elif main_proc:
        print(f"done in {time.time() - t0:.0f}s: checkpoint {last}, samples in {out / 'samples'}, "
              f"loss log {out / 'losses.csv'}")
    return {"checkpoint": last, "netG": netG, "netD": netD, "netG_ema": netG_ema, "step": step}


def adam(params, lr: float, cfg: Config, fused: bool = False) -> torch.optim.Adam:
    """Adam as StackGAN sets it (multi-tensor kernels; fused=True: one fused kernel,
    slower than the default on a CPU)."""
    return torch.optim.Adam(params, lr=lr, betas=(cfg.beta1, cfg.beta2), fused=fused)


@dataclasses.dataclass
class Nets:
    """What one training step updates. `G` and `D` are the modules the step calls
    (compiled and/or DDP-wrapped); `D_for_G` is D as G's loss reads it (no DDP gradient
    sync); `raw_G`, `raw_D` the plain modules (weights, requires_grad, EMA source)."""
    G: torch.nn.Module
    D: torch.nn.Module
    D_for_G: torch.nn.Module
    raw_G: torch.nn.Module
    raw_D: torch.nn.Module
    ema_G: torch.nn.Module | None
    opt_G: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer


def wrap(netG, netD, netG_ema, optG, optD, compile_: bool, world: int, device) -> Nets:
    """The step's view of the networks: torch.compile'd when asked, DDP across ranks."""
    from torch.nn.parallel import DistributedDataParallel as DDP
    G, D = (torch.compile(netG), torch.compile(netD)) if compile_ else (netG, netD)
    D_for_G = D
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        # D runs three times before its backward; a buffer broadcast at each call would
        # change BatchNorm statistics that autograd saved (torch 2.11 refuses that), so
        # D's buffers are synchronised only before checkpoints (distributed.sync_buffers)
        G, D = DDP(G, device_ids=ids), DDP(D, device_ids=ids, broadcast_buffers=False)
    return Nets(G, D, D_for_G, netG, netD, netG_ema, optG, optD)


def train_step(nets: Nets, batch, cfg: Config, step: int, bf16: bool) -> dict:
    """One StackGAN step on (real, wrong, text, labels): D learns matching pairs from
    wrong and generated ones, G learns to fool it (+ KL and the attribute term), the EMA
    of G follows. Returns the detached loss terms as device tensors: nothing here waits
    for the device (StepStats.read checks them for NaN when they are logged)."""
    real, wrong, emb, labels = batch
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    real, wrong = real.contiguous(memory_format=fmt), wrong.contiguous(memory_format=fmt)
    dev = real.device
    z = torch.randn(len(real), cfg.z_dim, device=dev)
    with autocast(dev, bf16):
        fake, mu, logvar = nets.G(emb, z)
    d_cond = emb if cfg.d_cond == "text" else mu  # what D reads the text from

    requires_grad(nets.raw_D, True)
    nets.opt_D.zero_grad(set_to_none=True)
    with autocast(dev, bf16):
        d_loss, d_stats = discriminator_loss(nets.D, real, wrong, fake, d_cond, cfg.loss,
                                             cfg.diffaug, cfg.r1_gamma, labels, cfg.aux_coef)
    d_loss.backward()
    nets.opt_D.step()

    requires_grad(nets.raw_D, False)
    nets.opt_G.zero_grad(set_to_none=True)
    with autocast(dev, bf16):
        g_loss, g_stats = generator_loss(nets.D_for_G, fake, d_cond, mu, logvar, cfg.kl_coef,
                                         cfg.loss, cfg.diffaug, labels, cfg.aux_coef)
    g_loss.backward()
    nets.opt_G.step()
    if nets.ema_G is not None:
        accumulate(nets.ema_G, nets.raw_G, ema_decay(cfg.ema_decay, step))
    return {**d_stats, **g_stats}


class StepStats:
    """Loss terms summed on the device over a log interval. `read` averages them (over
    the interval and the ranks) with one host synchronisation, and raises Diverged when
    any step's loss was not finite: a NaN anywhere in the interval makes the sum NaN,
    and no checkpoint is written after such a step."""

    def __init__(self):
        self.sums, self.n = {}, 0

    def add(self, stats: dict):
        self.sums = {k: self.sums.get(k, 0) + v.float() for k, v in stats.items()}
        self.n += 1

    def read(self, step: int) -> dict:
        import distributed as dist
        if not self.n:
            return {}
        keys = sorted(self.sums)
        means = dist.all_mean(torch.stack([self.sums[k] for k in keys]) / self.n)
        stats = dict(zip(keys, means.tolist()))
        self.sums, self.n = {}, 0
        if not all(math.isfinite(v) for v in stats.values()):
            raise Diverged(step, stats)
        return stats


def ema_decay(decay: float, step: int) -> float:
    """The EMA decay at `step`, warmed up as (1 + step) / (10 + step) until it reaches
    `decay`: a plain 0.999 would keep 0.999**2000 = 14% of the random initial weights
    after a 2,000-step run."""
    return min(decay, (1 + step) / (10 + step))


class Diverged(Exception):
    def __init__(self, step, stats):
        super().__init__(step)
        self.step, self.stats = step, {k: round(v, 4) for k, v in stats.items()}


# ------------------------------------------------------------------------ generation

SWEEP_COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "black")
SWEEP_PATTERNS = ("pure color", "striped", "dotted", "lattice", "floral")


def sweep_prompts(what: str, kind: str) -> list[str]:
    """Short prompts, in the form of the training captions' short forms, that differ in
    one attribute: "a red dress", "an orange dress", ... (colour) or "a red dress",
    "a red striped dress", ... (pattern)."""
    from datasets import KIND_NOUN, derive_captions
    if what == "colour":
        return [derive_captions(kind, "", c)["captions"][1] for c in SWEEP_COLOURS]
    return [derive_captions(kind, f"The {KIND_NOUN[kind]} has {p} patterns.", "red")["captions"][1]
            for p in SWEEP_PATTERNS]


def read_prompts(prompts, prompts_file) -> list[str]:
    out = list(prompts or [])
    if prompts_file:
        try:
            with open(prompts_file, encoding="utf-8") as f:
                out += [line.strip() for line in f if line.strip()]
        except OSError as e:
            raise UserError(f"cannot read --prompts_file {prompts_file}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise UserError(f"--prompts_file {prompts_file} is not UTF-8 text") from None
    if not out and not prompts_file and prompts is None:
        return list(DEFAULT_PROMPTS)
    cleaned = [" ".join(p.split()) for p in out]
    if not cleaned or any(not p for p in cleaned):
        raise UserError("a prompt is empty: give some text, e.g. --prompt \"red dress with lace\"")
    for i, p in enumerate(cleaned):
        if has_surrogates(p):  # bytes that are not UTF-8 on the command line
            raise UserError(f"prompt {i + 1} is not UTF-8 text ({clean_text(p)[:40]!r}): pass "
                            "prompts in UTF-8")
    return cleaned


def slug(text: str, n: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:n] or "prompt"


@torch.no_grad()
def sample_images(netG, emb: torch.Tensor, n: int, seed: int, batch: int = 64,
                  bf16: bool = False) -> torch.Tensor:
    """n images per text embedding, (len(emb)*n, 3, S, S) on the CPU; the same seed gives
    the same images (noise and conditioning-augmentation samples are both seeded)."""
    device = emb.device
    z = torch.randn(len(emb), n, netG.z_dim, generator=torch.Generator().manual_seed(seed))
    flat_emb, flat_z = emb.repeat_interleave(n, 0), z.flatten(0, 1).to(device)
    images = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for s in tqdm(range(0, len(flat_z), batch), desc="generating", unit="batch",
                      disable=len(flat_z) <= batch):
            with autocast(device, bf16):
                img, _, _ = netG(flat_emb[s:s + batch], flat_z[s:s + batch])
            images.append(img.float().cpu())
    return torch.cat(images)


TRAIN_STAGE1 = "python main.py --train y --stage 1"


def find_checkpoint(out_dir, stage=None) -> Path | None:
    """The generator to draw from: OUT_DIR/stage2/last.pt, else OUT_DIR/stage1/last.pt
    (only that stage's when `stage` is given); None when there is none yet."""
    for s in ([stage] if stage else [2, 1]):
        cand = Path(out_dir) / f"stage{s}" / "last.pt"
        if cand.is_file():
            return cand
    return None


class Drawer:
    """A generator and the text encoder of its training captions, both loaded once;
    `draw` turns prompts into images. The generation path of `--train n` and of the web
    page (app.py, timed by `bench.py --app`)."""

    def __init__(self, netG, cfg: Config, device, amp: str = "auto", channels_last: bool = True,
                 path=None):
        from get_embeddings import load_text_model
        self.device = torch.device(device)
        self.netG, self.cfg, self.path = netG.to(self.device).eval(), cfg, path
        self.bf16 = use_bf16(amp, self.device)
        if channels_last:
            self.netG.to(memory_format=torch.channels_last)
        load_text_model(cfg.text_model)  # loaded now, not at the first prompt

    @classmethod
    def load(cls, path, device, stage=None, amp: str = "auto", channels_last: bool = True):
        netG, cfg, _ = load_generator(path, device, expect_stage=stage)
        return cls(netG, cfg, device, amp, channels_last, path=Path(path))

    @property
    def sizes(self) -> dict[int, int]:
        """{stage: image size} this generator can draw: a Stage-II generator also draws
        its Stage-I drafts."""
        if self.cfg.stage == 2:
            return {2: self.cfg.stage2_size, 1: self.cfg.stage1_size}
        return {1: self.cfg.stage1_size}

    def too_long(self, prompts) -> list[int]:
        """Indices of prompts longer than the text encoder reads."""
        from get_embeddings import too_long
        return too_long(prompts, self.cfg.text_model)

    @torch.no_grad()
    def draw(self, prompts, n: int, seed: int, stage=None) -> torch.Tensor:
        """n images per prompt, (len(prompts)*n, 3, S, S) in [-1, 1] on the CPU, prompt
        by prompt; the same seed gives the same images. `stage` 1 draws a Stage-II
        generator's Stage-I drafts (stage1_size)."""
        from get_embeddings import encode_texts
        if stage not in (None, *self.sizes):
            raise UserError(f"this Stage-{self.cfg.stage} generator cannot draw Stage {stage}")
        net = self.netG.stage1 if stage == 1 and self.cfg.stage == 2 else self.netG
        emb = torch.from_numpy(encode_texts(prompts, self.cfg.text_model)).to(self.device)
        return sample_images(net, emb, n, seed, bf16=self.bf16)


@torch.no_grad()
def generate(cfg: Config, net_g, prompts, stage=None, name: str = "grid") -> Path:
    """Draw cfg.n_samples images per prompt: OUT_DIR/generated/<name>.png (one row per
    prompt) and one PNG per image."""
    device = resolve_device(cfg.device)
    if net_g is None:
        net_g = find_checkpoint(cfg.out_dir, stage)
        if net_g is None:
            raise UserError(f"no generator checkpoint found under {cfg.out_dir}/stage*/last.pt: "
                            f"train one first ({TRAIN_STAGE1}) or pass --net_g")
    drawer = Drawer.load(net_g, device, stage, cfg.amp, cfg.channels_last)
    out = check_writable_dir(Path(cfg.out_dir) / "generated")
    for i in drawer.too_long(prompts):
        print(f"note: prompt {i + 1} is longer than the text encoder reads; only its start is used")
    n = cfg.n_samples
    images = drawer.draw(prompts, n, cfg.seed)
    grid = save_grid(images, out / f"{name}.png", nrow=n, row_labels=prompts)
    pix = to_uint8(images)
    for i, p in enumerate(prompts):
        for k in range(n):
            Image.fromarray(pix[i * n + k]).save(out / f"{i:03d}_{slug(p)}_{k}.png")
    print(f"wrote {grid} ({len(prompts)} prompts x {n} samples, stage {drawer.cfg.stage}, "
          f"{images.shape[-1]}px) and {len(prompts) * n} single images in {out}")
    return grid


def main(argv=None) -> int:
    def job():
        args = build_parser().parse_args(argv)
        cfg, explicit = make_config(args)
        if args.train:
            train(dataclasses.replace(cfg, stage=args.stage or 1), explicit, args.stage1_g,
                  resume=args.resume)
        elif args.sweep:
            generate(cfg, args.net_g, sweep_prompts(args.sweep, args.sweep_kind), stage=args.stage,
                     name=f"sweep_{args.sweep}_{args.sweep_kind}")
        else:
            generate(cfg, args.net_g, read_prompts(args.prompt, args.prompts_file), stage=args.stage)

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
