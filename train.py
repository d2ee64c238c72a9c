"""Train a StackGAN stage: the training loop, its step, and checkpoints with exact resume.

`train()` serves both stages: the stage decides which G/D pair is built and which
cached image size is read. `train_step`, `Nets`, `wrap` and `StepStats` are also what
bench.py times.
"""
from __future__ import annotations

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
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

import distributed as dist
from captions import KINDS, caption_vocabulary
from config import ARCH_FIELDS, FIELD_RULES, Config
from datasets import prepare
from get_embeddings import load_data
from model import Stage1_G, build_models
from sample import load_generator
from synthetic import ensure_synthetic
from utils import (LossLog, UserError, WriteError, accumulate, autocast, check_arch,
                   check_writable_dir, copy_file, discriminator_loss, first_line, free_bytes,
                   generator_loss, human_bytes, init_wandb, load_checkpoint, requires_grad,
                   resolve_device, save_checkpoint, save_grid, set_seed, standing_stats,
                   state_bytes, use_bf16)

MIN_BATCH = FIELD_RULES["batch_size"].lo  # BatchNorm needs two images to train on


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


def out_of_time(cfg: Config, started: float) -> bool:
    """True once this invocation has run --max_minutes (never when it is 0)."""
    return cfg.max_minutes > 0 and time.time() - started >= cfg.max_minutes * 60


def configure_device(cfg: Config, device: torch.device):
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
        torch.backends.cudnn.allow_tf32 = cfg.tf32
        torch.backends.cudnn.benchmark = True


def rng_state(rng: torch.Generator) -> dict:
    """The random state a checkpoint keeps: torch's, the data RNG's (stored as "gen"), CUDA's."""
    state = {"torch": torch.get_rng_state(), "gen": rng.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, rng: torch.Generator):
    torch.set_rng_state(state["torch"])
    try:
        rng.set_state(state["gen"])
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


def train(asked: Config, explicit: set, stage1_path=None, resume=None) -> dict:
    """One loop for both stages. `asked` is the Config of the command line, `explicit`
    the names of the flags given. Returns {"checkpoint": path, "netG", "netD",
    "netG_ema", "step"} (the modules of this rank, unwrapped)."""
    started = time.time()  # --max_minutes counts from here, data preparation included
    rank, world, ddp_device = dist.setup(asked.device)
    main_proc = rank == 0
    device = ddp_device or resolve_device(asked.device)
    configure_device(asked, device)
    if asked.num_threads:
        torch.set_num_threads(asked.num_threads)
    out = Path(asked.out_dir) / f"stage{asked.stage}"
    if main_proc:
        check_writable_dir(out)

    state, resume_path = read_resume(resume, out, asked.stage)
    stage1_g, stage1_cfg = stage1_generator(asked, state, stage1_path)
    run_cfg = settle_config(asked, explicit, state, resume_path, stage1_cfg, stage1_path)
    data = load_training_data(run_cfg, main_proc)
    cfg = fit_batch(run_cfg, len(data), world)  # the run's settings: final from here on
    if main_proc:
        print(describe_config(cfg))

    nets, scheds, (start_epoch, start_batch, step) = build_training(
        cfg, stage1_g, state, resume_path, device, rank, world)
    data.to(device)  # CUDA: the image cache and every table on the device when they fit
    # the data's random draws: augmentation, "wrong" pairs, which caption of a sample
    rng = torch.Generator(device=data.device).manual_seed(cfg.seed + rank)
    if state is not None and state.get("rng") and world == 1:
        restore_rng(state["rng"], rng, resume_path)
    bf16 = use_bf16(cfg.amp, device)
    if main_proc:
        print(f"device {device}, bf16 autocast {'on' if bf16 else 'off'}, "
              f"{'channels-last' if cfg.channels_last else 'contiguous'} layout, image cache on "
              f"{'the device' if data.device_images is not None else 'the host'}"
              + (f", {world} processes" if world > 1 else ""))
    run = init_wandb(cfg, f"train-stage{cfg.stage}", out,
                     run_id=state.get("wandb_id") if state else None) if main_proc else None
    log = LossLog(out / "losses.csv", run, truncate_after=step if state else 0) \
        if main_proc else None
    snapshots = Snapshots(out, cfg, data, stage1_cfg, device, bf16, run, log, main_proc)

    steps_per_epoch = len(data) // (cfg.batch_size * world)
    meter, t0, stopped = StepStats(), time.time(), False
    try:
        with StopSignal() as stop:
            for epoch in range(start_epoch, cfg.epochs):
                order = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
                skip = start_batch if epoch == start_epoch else 0
                bar = tqdm(data.batches(cfg.batch_size, order, rank, world), total=steps_per_epoch,
                           disable=not main_proc, unit="step",
                           desc=f"stage {cfg.stage} epoch {epoch + 1}/{cfg.epochs}")
                for i, idx in enumerate(bar):
                    if i < skip:
                        continue
                    meter.add(train_step(nets, data.batch(idx, cfg, rng, device=device), cfg,
                                         step, bf16))
                    step += 1
                    stopped = dist.any_flag(stop.flag or 0 < cfg.max_steps <= step
                                            or out_of_time(cfg, started), device)
                    if step % cfg.log_interval == 0 or i + 1 == steps_per_epoch or stopped:
                        stats = meter.read(step)  # the only wait for the device; raises on NaN
                        if main_proc:
                            log_row(log, bar, stats, step, epoch, nets.opt_G)
                    if stopped:
                        snapshots.save(nets, scheds, rng, (epoch, i + 1, step), "interrupted")
                        break
                if stopped:
                    break
                step_schedulers(scheds)
                if (epoch + 1) % cfg.snapshot_interval == 0 or epoch + 1 == cfg.epochs:
                    snapshots.save(nets, scheds, rng, (epoch + 1, 0, step),
                                   f"epoch_{epoch + 1:04d}")
    except Diverged as e:
        raise diverged_error(e, snapshots.last, main_proc) from None
    except WriteError as e:  # a full disk: the checkpoint before it is whole
        raise WriteError(f"{e}; " + kept_message(cfg, snapshots.last, main_proc)) from None
    finally:
        try:
            if main_proc:
                close_log(log, failing=sys.exc_info()[0] is not None)
                if run is not None:
                    run.finish()
        finally:
            dist.cleanup()
    if main_proc:
        print(stopped_message(cfg, epoch, step, snapshots.last) if stopped else
              f"done in {time.time() - t0:.0f}s: checkpoint {snapshots.last}, samples in "
              f"{out / 'samples'}, loss log {out / 'losses.csv'}")
    return {"checkpoint": snapshots.last, "netG": nets.raw_G, "netD": nets.raw_D,
            "netG_ema": nets.ema_G, "step": step}


# ----------------------------------------------------------------- settling the run

def read_resume(resume, out: Path, stage: int):
    """(checkpoint dict, its path) of --resume, or (None, None) when there is none."""
    path = resolve_resume(resume, out)
    if path is None:
        return None, None
    state = load_checkpoint(path, resume=True)
    saved = Config.from_dict(state["config"])
    if saved.stage != stage:
        raise UserError(f"{path} is a Stage-{saved.stage} checkpoint; this run trains "
                        f"Stage {stage}")
    return state, path


def stage1_generator(asked: Config, state, stage1_path):
    """(Stage-I generator, its Config) that a Stage-II run refines; (None, None) in Stage I.
    A resumed Stage-II run takes the weights from its own checkpoint."""
    if asked.stage != 2:
        return None, None
    if state is not None:
        stage1_cfg = Config.from_dict(state["stage1_config"])
        return Stage1_G(stage1_cfg), stage1_cfg  # its weights come with the Stage-II G
    if not stage1_path:
        found = Path(asked.out_dir) / "stage1" / "last.pt"
        if not found.is_file():
            raise UserError(f"Stage II refines a trained Stage-I generator, and {found} does not "
                            "exist: train Stage I first (`--train y --stage 1` with the same "
                            "--out_dir) or pass --stage1_g PATH")
        print(f"Stage II refines the Stage-I generator {found}")
        stage1_path = found
    stage1_g, stage1_cfg, _ = load_generator(stage1_path, "cpu", expect_stage=1)
    if stage1_cfg.text_model != asked.text_model:
        raise UserError(f"{stage1_path} was trained with text model {stage1_cfg.text_model!r}, "
                        f"this run uses {asked.text_model!r}")
    return stage1_g, stage1_cfg


STAGE1_SHARED = ("stage1_size", "z_dim", "condition_dim", "text_dim")  # Stage II inherits these


def settle_config(asked: Config, explicit: set, state, resume_path, stage1_cfg,
                  stage1_path) -> Config:
    """The run's settings before the data is seen. Resumed: the checkpoint's, except
    flags given now (which must fit its networks); a step or time limit only ever
    applies to the invocation it was given to. A new Stage-II run: the Stage-I
    generator's shared fields, unless given."""
    if state is not None:
        saved = Config.from_dict(state["config"])
        check_arch({k: getattr(saved, k) for k in ARCH_FIELDS if k in explicit}, asked,
                   resume_path)
        return dataclasses.replace(saved, **{**{k: getattr(asked, k) for k in explicit},
                                             "max_steps": asked.max_steps,
                                             "max_minutes": asked.max_minutes})
    if stage1_cfg is None:
        return asked
    cfg = dataclasses.replace(asked, **{k: getattr(stage1_cfg, k) for k in STAGE1_SHARED
                                        if k not in explicit})
    check_arch({k: getattr(stage1_cfg, k) for k in STAGE1_SHARED}, cfg, stage1_path)
    return cfg


def load_training_data(cfg: Config, main_proc: bool):
    """The training split; rank 0 prepares the caches once, the others then read them."""
    index = None
    if main_proc:
        if cfg.data_dir is None:
            print(f"no --data_dir: using the built-in synthetic garments in {cfg.builtin_dir}")
            ensure_synthetic(cfg.builtin_dir, n_per_kind=cfg.builtin_per_kind, seed=0)
        index = prepare(cfg, cfg.image_size)
    dist.barrier()
    data = load_data(cfg, cfg.image_size, progress=main_proc, index=index)
    if main_proc:
        counts = ", ".join(f"{k} {data.kinds.count(k)}" for k in KINDS)
        print(f"stage {cfg.stage}: {len(data)} training images ({counts})")
    return data


def fit_batch(cfg: Config, n_images: int, world: int) -> Config:
    """cfg with a batch no larger than the data; an error when not even MIN_BATCH fits."""
    if n_images >= cfg.batch_size * world:
        return cfg
    if n_images < MIN_BATCH * world:
        raise UserError(f"{n_images} usable training image{'s'[:n_images != 1]}: a batch "
                        f"needs at least {MIN_BATCH} per process ({MIN_BATCH * world} "
                        f"here), so nothing would train; add images or check the skipped "
                        "ones (python datasets.py --data_dir DIR)")
    print(f"fewer images than a batch: batch size set to {n_images // world}")
    return dataclasses.replace(cfg, batch_size=n_images // world)


def describe_config(cfg: Config) -> str:
    """The settings that differ from config.Config's defaults, one line."""
    default = Config()
    diff = [f"{f.name}={getattr(cfg, f.name)!r}" for f in dataclasses.fields(Config)
            if getattr(cfg, f.name) != getattr(default, f.name)]
    return "config (besides the defaults of config.Config): " + (", ".join(diff) or "none")


def build_training(cfg: Config, stage1_g, state, resume_path, device, rank: int, world: int):
    """The networks, optimisers and schedulers of a run, restored from `state` when
    resuming. Returns (Nets, (schedG, schedD), (epoch, batch, step) to start at)."""
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
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    for m in (netG, netD, netG_ema):  # on the device before any state is restored, so
        if m is not None:             # that the optimizers place their state as torch does
            m.to(device, memory_format=fmt)
    ada = adaptive_p(cfg, device)
    start = (0, 0, 0)
    if state is not None:
        modules = {"netG": netG, "netD": netD, "optG": optG, "optD": optD, "schedG": schedG,
                   "schedD": schedD}
        if ada is not None and state.get("augment"):
            modules["augment"] = ada
        restore_training(state, modules, netG_ema, resume_path)
        start = (state["epoch"], state.get("batch", 0), state["step"])
        print(f"resumed from {resume_path} at epoch {start[0] + 1}, step {start[2]}")
    netG.train()
    netD.train()
    nets = wrap(netG, netD, netG_ema, optG, optD, cfg.compile, world, device, ada)
    return nets, (schedG, schedD), start


def restore_training(state: dict, modules: dict, netG_ema, resume_path):
    """Load every state dict of a checkpoint; a plain error when they do not fit."""
    try:
        for key, obj in modules.items():
            obj.load_state_dict(state[key])
        if netG_ema is not None:
            netG_ema.load_state_dict(state.get("netG_ema") or state["netG"])
    except (RuntimeError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise UserError(f"cannot resume from {resume_path}: its state does not fit this "
                        f"run ({first_line(e)})") from None


def restore_rng(state: dict, rng: torch.Generator, resume_path):
    try:
        set_rng_state(state, rng)
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        raise UserError(f"cannot resume from {resume_path}: its random state does not fit "
                        f"this run ({first_line(e)})") from None


# ------------------------------------------------------------------- inside the loop

EPOCH_FILE = re.compile(r"epoch_\d+\.pt")  # the checkpoints --keep_checkpoints counts


class Snapshots:
    """What a run writes at each snapshot: last.pt, a tagged copy (checkpoints/<tag>.pt,
    unless keep_checkpoints is 0) and the sample grid; then the tagged copies beyond the
    newest keep_checkpoints go. Rank 0 writes them; every rank first takes rank 0's
    buffers."""

    def __init__(self, out: Path, cfg: Config, data, stage1_cfg, device, bf16: bool, run, log,
                 main_proc: bool):
        self.out, self.cfg, self.data, self.stage1_cfg = out, cfg, data, stage1_cfg
        self.bf16, self.run, self.log, self.main_proc = bf16, run, log, main_proc
        self.last = out / "last.pt"
        self.rows = snapshot_rows(data)
        self.vocabulary = caption_vocabulary(data.captions)  # the words the model was shown
        self.noise = torch.randn(len(self.rows), 4 if cfg.stage == 1 else 2, cfg.z_dim,
                                 generator=torch.Generator().manual_seed(cfg.seed + 999)).to(device)

    def save(self, nets: Nets, scheds, rng: torch.Generator, position, tag: str):
        """Refresh the EMA generator's BatchNorm statistics, then write the checkpoint at
        `position` (epoch, batch, step) and the sample grid."""
        cfg, netG_ema = self.cfg, nets.ema_G
        dist.sync_buffers(nets.raw_G, nets.raw_D, netG_ema)
        if not self.main_proc:
            return
        if netG_ema is not None:
            standing_stats(netG_ema, self.data.text_emb, n_batches=16, batch_size=cfg.batch_size,
                           seed=cfg.seed, bf16=self.bf16)
        epoch, batch, step = position
        ckpt = {"netG": nets.raw_G.state_dict(), "netD": nets.raw_D.state_dict(),
                "netG_ema": netG_ema.state_dict() if netG_ema is not None else None,
                "optG": nets.opt_G.state_dict(), "optD": nets.opt_D.state_dict(),
                "schedG": scheds[0].state_dict(), "schedD": scheds[1].state_dict(),
                "epoch": epoch, "batch": batch, "step": step, "rng": rng_state(rng),
                "augment": nets.ada.state_dict() if nets.ada is not None else None,
                "config": cfg.to_dict(), "wandb_id": self.run.id if self.run is not None else None,
                "stage1_config": self.stage1_cfg.to_dict() if self.stage1_cfg else None,
                "vocabulary": self.vocabulary}
        keep = cfg.keep_checkpoints
        tagged = self.out / "checkpoints" / f"{tag}.pt" if keep else None
        self.check_room(ckpt, tag, copies=2 if keep else 1)  # before anything is written
        if tagged is not None:
            save_checkpoint(ckpt, tagged)
            copy_file(tagged, self.last)  # the same bytes: serialised and hashed once
        else:
            save_checkpoint(ckpt, self.last)
        self.prune(tagged)
        device = self.noise.device
        with autocast(device, self.bf16):
            write_snapshot(nets.raw_G if netG_ema is None else netG_ema, self.data, self.rows,
                           self.noise, self.out / "samples" / f"{tag}.png", cfg.stage)
        self.log.log_image(step, self.out / "samples" / f"{tag}.png")
        self.log.flush()

    def check_room(self, ckpt: dict, tag: str, copies: int):
        """Stop with a one-line error, before anything is written, when the disk lacks
        room for `copies` checkpoints (the tagged copy and last.pt) of the size of the
        previous one or of this one's tensors, whichever is larger."""
        size = max(state_bytes(ckpt), self.last.stat().st_size if self.last.is_file() else 0)
        free = free_bytes(self.out)
        if free is None or free >= copies * size:
            return
        files = f"checkpoints/{tag}.pt and last.pt" if copies == 2 else "last.pt"
        fewer = ("" if self.cfg.keep_checkpoints == 0 else
                 " (--keep_checkpoints 0 writes last.pt alone and needs half as much)")
        raise UserError(f"not enough disk space for the next checkpoint in {self.out}: "
                        f"{human_bytes(free)} free, {human_bytes(copies * size)} needed "
                        f"({files}, {human_bytes(size)} each){fewer}; "
                        + kept_message(self.cfg, self.last, True))

    def prune(self, written):
        """Remove the epoch_*.pt beyond the newest keep_checkpoints (`written`, the one
        just saved, counts among them) and, once an epoch checkpoint or last.pt alone
        has been written, checkpoints/interrupted.pt: the stop it records is behind."""
        folder = self.out / "checkpoints"
        if not folder.is_dir():
            return
        is_epoch = written is not None and EPOCH_FILE.fullmatch(written.name) is not None
        older = sorted((p for p in folder.iterdir() if EPOCH_FILE.fullmatch(p.name)
                        and p != written), key=lambda p: (p.stat().st_mtime_ns, p.name),
                       reverse=True)
        gone = older[max(0, self.cfg.keep_checkpoints - is_epoch):]
        if written is None or is_epoch:
            gone += [p for p in [folder / "interrupted.pt"] if p.is_file()]
        removed = []
        for p in gone:
            try:
                p.unlink()
                removed.append(p.name)
            except OSError as e:
                print(f"note: could not remove the old checkpoint {p} ({e.strerror or e})")
        if removed:
            print(f"removed {', '.join(removed)} from {folder} (--keep_checkpoints "
                  f"{self.cfg.keep_checkpoints} keeps the newest epoch checkpoints)")


def close_log(log: LossLog, failing: bool):
    """Write the loss log at the end of a run; when the run is failing already (a full
    disk), a failure to write the log does not hide that first error."""
    try:
        log.flush()
    except WriteError:
        if not failing:
            raise


def log_row(log, bar, stats: dict, step: int, epoch: int, opt_G):
    log.log(step, {**stats, "lr_g": opt_G.param_groups[0]["lr"], "epoch": epoch + 1})
    bar.set_postfix(d=f"{stats['d_loss']:.3f}", g=f"{stats['g_adv']:.3f}", kl=f"{stats['kl']:.4f}")


def step_schedulers(scheds):
    with warnings.catch_warnings():  # resumed exactly at an epoch's end
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
        for s in scheds:
            s.step()


def diverged_error(e: "Diverged", last: Path, main_proc: bool) -> UserError:
    have = last.is_file() and main_proc
    return UserError(f"training diverged at step {e.step} (non-finite loss: {e.stats}); "
                     + (f"the last good checkpoint {last} was kept" if have else
                        "no checkpoint had been written yet")
                     + "; try a lower --lr_g/--lr_d")


def resume_command(cfg: Config, last: Path) -> str:
    return (f"python main.py --train y --stage {cfg.stage} --out_dir {cfg.out_dir} "
            f"--resume {last}" + (f" --data_dir {cfg.data_dir}" if cfg.data_dir else ""))


def stopped_message(cfg: Config, epoch: int, step: int, last: Path) -> str:
    return (f"stopped at epoch {epoch + 1}, step {step}; checkpoint {last}. Resume with: "
            + resume_command(cfg, last))


def kept_message(cfg: Config, last: Path, main_proc: bool) -> str:
    """What a run that stops for want of disk space leaves, and how to go on."""
    if not (main_proc and last.is_file()):
        return "no checkpoint had been written yet; run again once there is room"
    return (f"the last good checkpoint {last} was kept; once there is room, resume with: "
            + resume_command(cfg, last))


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
    ada: "AdaptiveP | None" = None  # the adaptive DiffAugment probability, when adaptive


def wrap(netG, netD, netG_ema, optG, optD, compile_: bool, world: int, device,
         ada: "AdaptiveP | None" = None) -> Nets:
    """The step's view of the networks: torch.compile'd when asked, DDP across ranks."""
    G, D = (torch.compile(netG), torch.compile(netD)) if compile_ else (netG, netD)
    D_for_G = D
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        # D runs three times before its backward; a buffer broadcast at each call would
        # change BatchNorm statistics that autograd saved (torch 2.11 refuses that), so
        # D's buffers are synchronised only before checkpoints (distributed.sync_buffers)
        G, D = DDP(G, device_ids=ids), DDP(D, device_ids=ids, broadcast_buffers=False)
    return Nets(G, D, D_for_G, netG, netD, netG_ema, optG, optD, ada)


def train_step(nets: Nets, batch, cfg: Config, step: int, bf16: bool) -> dict:
    """One StackGAN step on (real, wrong, text, labels): D learns matching pairs from
    wrong and generated ones, G learns to fool it (+ KL, the attribute term and mode
    seeking), the EMA of G follows. Returns the detached loss terms as device tensors:
    nothing here waits for the device (StepStats.read checks them for NaN when they are
    logged)."""
    real, wrong, emb, labels = batch
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    real, wrong = real.contiguous(memory_format=fmt), wrong.contiguous(memory_format=fmt)
    dev = real.device
    # with mode seeking, G draws the first half's captions twice: fake i and i + n share one
    g_idx = paired_index(len(real), dev) if cfg.ms_coef > 0 else None
    g_emb, g_labels = (emb, labels) if g_idx is None else (emb[g_idx], labels[g_idx])
    z = torch.randn(len(real), cfg.z_dim, device=dev)
    with autocast(dev, bf16):
        fake, mu, logvar = nets.G(g_emb, z)
        # what D reads the text from, for the real and wrong images and for the fakes
        if cfg.d_cond == "text":
            d_cond, fake_cond = emb, g_emb
        else:
            d_cond, fake_cond = (mu if g_idx is None else ca_mean(nets.raw_G, emb)), mu

    aug_p = nets.ada.p if nets.ada is not None else cfg.aug_p
    # lazy regularisation: the gradient penalties every reg_every-th step, reg_every times as strong
    reg = cfg.reg_every if step % cfg.reg_every == 0 else 0
    requires_grad(nets.raw_D, True)
    nets.opt_D.zero_grad(set_to_none=True)
    with autocast(dev, bf16):
        d_loss, d_stats = discriminator_loss(nets.D, real, wrong, fake, d_cond, cfg.loss,
                                             cfg.diffaug, reg * cfg.r1_gamma, labels,
                                             cfg.aux_coef, fake_cond, aug_p, cfg.recon_coef,
                                             reg * cfg.ma_gp)
    d_loss.backward()
    nets.opt_D.step()

    requires_grad(nets.raw_D, False)
    nets.opt_G.zero_grad(set_to_none=True)
    with autocast(dev, bf16):
        g_loss, g_stats = generator_loss(nets.D_for_G, fake, fake_cond, mu, logvar, cfg.kl_coef,
                                         cfg.loss, cfg.diffaug, g_labels, cfg.aux_coef, z,
                                         cfg.ms_coef, aug_p)
    g_loss.backward()
    if cfg.stage == 2 and cfg.sr_coef > 0:
        g_stats["sr"] = super_resolution_step(nets.G, real, emb, z, cfg, bf16)
    nets.opt_G.step()
    if nets.ema_G is not None:
        accumulate(nets.ema_G, nets.raw_G, ema_decay(cfg.ema_decay, step))
    stats = {**d_stats, **g_stats}
    if nets.ada is not None:
        stats["aug_p"] = nets.ada.p  # the probability this step used
        nets.ada.update(d_stats["d_real_sign"])
    return stats


def super_resolution_step(G, real, emb, z, cfg: Config, bf16: bool) -> torch.Tensor:
    """sr_coef's term, backpropagated into G's gradients: Stage II refines each real photo
    scaled down to stage1_size (in place of a draft) and is held to the photo itself by
    L1. Its own forward and backward, so that BatchNorm never mixes drafts and photos."""
    small = F.interpolate(real, size=cfg.stage1_size, mode="area")
    with autocast(real.device, bf16):
        rebuilt = G(emb, z, low=small)[0]
    l_sr = (rebuilt.float() - real.float()).abs().mean()
    (cfg.sr_coef * l_sr).backward()
    return l_sr.detach()


def adaptive_p(cfg: Config, device) -> "AdaptiveP | None":
    """The adaptive DiffAugment probability of a run, or None when it is fixed (aug_p)."""
    return AdaptiveP(cfg, device) if cfg.diffaug and cfg.ada_target > 0 else None


class AdaptiveP:
    """ADA's adaptive augmentation probability (Karras et al., 2020): every `interval`
    steps, r = E[sign D(real)] over those steps is compared with the target; p moves up
    when D calls more real images real than that (it is memorising them), down when
    fewer, by batch * interval / (ada_kimg * 1000), so that it can cross [0, 1] in
    ada_kimg thousand images. p lives on the device: no step waits for the host."""

    interval = 4

    def __init__(self, cfg: Config, device):
        self.target, self.speed = cfg.ada_target, cfg.batch_size * self.interval / (cfg.ada_kimg * 1000)
        self.p = torch.zeros((), device=device)
        self.signs, self.n = torch.zeros((), device=device), 0

    def update(self, real_sign: torch.Tensor):
        self.signs = self.signs + real_sign.float()
        self.n += 1
        if self.n == self.interval:
            r = dist.all_mean(self.signs / self.n)
            self.p = (self.p + torch.sign(r - self.target) * self.speed).clamp(0, 1)
            self.signs, self.n = torch.zeros_like(self.signs), 0

    def state_dict(self) -> dict:
        return {"p": float(self.p), "signs": float(self.signs), "n": self.n}

    def load_state_dict(self, state: dict):
        p, signs, n = state["p"], state["signs"], state["n"]
        if not (isinstance(n, int) and 0 <= n < self.interval and 0 <= p <= 1
                and math.isfinite(signs)):
            raise ValueError(f"augment state out of range: {state!r:.80}")
        self.p = torch.tensor(float(p), device=self.p.device)
        self.signs, self.n = torch.tensor(float(signs), device=self.p.device), n


def paired_index(n: int, device) -> torch.Tensor:
    """Caption order of a mode-seeking batch of n: 0..h-1 then 0..n-h-1 (h = n // 2), so
    that rows i and i + h hold the same caption."""
    h = n // 2
    return torch.cat([torch.arange(h, device=device), torch.arange(n - h, device=device)])


@torch.no_grad()
def ca_mean(netG: torch.nn.Module, emb: torch.Tensor) -> torch.Tensor:
    """G's conditioning-augmentation mean of `emb` (D's text with d_cond "mu")."""
    return netG.ca_net.encode(emb)[0]


class StepStats:
    """Loss terms summed on the device over a log interval. `read` averages each over
    the steps that had it (a lazy penalty is on some steps only) and over the ranks,
    with one host synchronisation, and raises Diverged when any step's loss was not
    finite: a NaN anywhere in the interval makes the sum NaN, and no checkpoint is
    written after such a step."""

    def __init__(self):
        self.sums, self.counts = {}, {}

    def add(self, stats: dict):
        for k, v in stats.items():
            self.sums[k] = self.sums.get(k, 0) + v.float()
            self.counts[k] = self.counts.get(k, 0) + 1

    def read(self, step: int) -> dict:
        if not self.sums:
            return {}
        keys = sorted(self.sums)
        means = dist.all_mean(torch.stack([self.sums[k] / self.counts[k] for k in keys]))
        stats = dict(zip(keys, means.tolist()))
        self.sums, self.counts = {}, {}
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
