"""Helpers shared by training and generation: losses, grids, checkpoints, logging."""
from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import importlib.util
import json
import os
import random
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from config import ARCH_FIELDS, Config, UserError


def run_cli(job) -> int:
    """Run a command-line job: a UserError becomes one `error: ...` line and exit code 2,
    Ctrl-C exit code 130; never a traceback for the user's mistakes."""
    try:
        job()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, or its type when it has none."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


# ------------------------------------------------------------------------- reading
#
# Every file the repository reads from a user goes through one reader per kind: JSON
# here, captions/labels/images/parsing maps in datasets.py, embeddings in
# get_embeddings.py, checkpoints below. Each gives the data or a one-line UserError.

_SURROGATE_RE = re.compile("[\ud800-\udfff]")


def has_surrogates(text: str) -> bool:
    """True for text holding lone UTF-16 surrogates: valid in JSON ("\\ud800") and what
    Python makes of bytes that are not UTF-8 on a command line; no encoder accepts them."""
    return _SURROGATE_RE.search(text) is not None


def clean_text(text: str) -> str:
    """`text` with every lone surrogate replaced by U+FFFD (the replacement character)."""
    return _SURROGATE_RE.sub("\ufffd", text)


def read_json(path, what: str = "file"):
    """The JSON value in the file at `path` (UTF-8, a leading byte-order mark allowed); a
    UserError naming it when it cannot be read, is not UTF-8 JSON, is nested too deeply to
    read, or holds a number too long to read."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            return json.load(f)
    except OSError as e:
        raise UserError(f"cannot read the {what} {path}: {e.strerror or e}") from None
    except RecursionError:
        raise UserError(f"{path} is not a usable {what}: its JSON is nested too deeply") from None
    except ValueError as e:  # bad JSON, not UTF-8, an integer of more than 4,300 digits
        raise UserError(f"{path} is not valid JSON: {first_line(e)}") from None


# ---------------------------------------------------------------------------- misc

def set_seed(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)  # the form was checked by config.DEVICE
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA "
                        "device(s), numbered from 0")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {name}: Apple's MPS is not available on this machine "
                        "(use --device cpu)")
    return dev


def cpu_has_bf16() -> bool:
    """True on CPUs with native bf16 arithmetic (AVX512-BF16 or AMX), where oneDNN runs
    bf16 convolutions several times faster than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags


def use_bf16(mode: str, device: torch.device) -> bool:
    if mode not in ("auto", "on", "off"):
        raise UserError(f"--amp {mode}: expected auto, on or off")
    if mode != "auto":
        return mode == "on"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_bf16()


def autocast(device: torch.device, enabled: bool):
    """A fresh bf16 autocast context for `device` (a no-op when not enabled)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def requires_grad(model: torch.nn.Module, flag: bool = True):
    for p in model.parameters():
        p.requires_grad_(flag)


@torch.no_grad()
def accumulate(ema: torch.nn.Module, model: torch.nn.Module, decay: float):
    """ema <- decay * ema + (1 - decay) * model for parameters; buffers (BatchNorm
    statistics) are copied."""
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()],
                         1 - decay)
    buffers = list(ema.buffers())
    if buffers:
        torch._foreach_copy_(buffers, list(model.buffers()))


@torch.no_grad()
def standing_stats(netG: torch.nn.Module, emb: torch.Tensor, n_batches: int = 16,
                   batch_size: int = 64, seed: int = 0, bf16: bool = False):
    """Recompute the BatchNorm running statistics of a generator as plain averages over
    `n_batches` training-mode forward passes on random rows of `emb` (caption
    embeddings, on any device: each batch goes to the generator's) with fresh noise.
    The EMA generator needs this: its averaged weights never ran forward in training, so
    statistics copied from the live generator do not fit them. The caller's random
    state is left untouched; the result depends on `seed` only."""
    was_training = netG.training
    netG.train()  # Stage2_G keeps its frozen Stage I in eval mode: its statistics stay
    active = [m for m in netG.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
              and m.track_running_stats and m.training]
    if active and len(emb):
        momenta = [m.momentum for m in active]
        for m in active:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the passes below
        dev = next(netG.parameters()).device
        rng = torch.Generator().manual_seed(seed)
        bs = max(2, min(batch_size, len(emb)))
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(seed)
            for _ in range(n_batches):
                idx = torch.randint(len(emb), (bs,), generator=rng)
                z = torch.randn(bs, netG.z_dim, generator=rng).to(dev)
                with autocast(dev, bf16):
                    netG(emb[idx.to(emb.device)].to(dev), z)
        for m, mom in zip(active, momenta):
            m.momentum = mom
    netG.train(was_training)
    return netG


# -------------------------------------------------------------------------- losses

def kl_loss(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)), averaged over batch and dimensions."""
    mu, logvar = mu.float(), logvar.float()
    return -0.5 * torch.mean(1 + logvar - mu.pow(2) - logvar.exp())


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    logits = logits.float()  # losses in fp32 also under bf16 autocast
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def _d_term(logits: torch.Tensor, real: bool, loss: str) -> torch.Tensor:
    """D's loss for logits that should read real (True) or fake (False)."""
    if loss == "hinge":
        logits = logits.float()
        return F.relu(1 - logits).mean() if real else F.relu(1 + logits).mean()
    return _bce(logits, 1.0 if real else 0.0)


def _g_term(logits: torch.Tensor, loss: str) -> torch.Tensor:
    return -logits.float().mean() if loss == "hinge" else _bce(logits, 1.0)


def _aug_color(x: torch.Tensor) -> torch.Tensor:
    """Random brightness, saturation and contrast per image."""
    b, dev = x.size(0), x.device
    x = x + (torch.rand(b, 1, 1, 1, device=dev, dtype=x.dtype) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (torch.rand(b, 1, 1, 1, device=dev, dtype=x.dtype) * 2) + mean
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - mean) * (torch.rand(b, 1, 1, 1, device=dev, dtype=x.dtype) + 0.5) + mean


def _aug_translation(x: torch.Tensor) -> torch.Tensor:
    """A random shift of up to 1/8 of the side per image, the uncovered border zero."""
    b, dev = x.size(0), x.device
    h, w = x.shape[2:]
    sh, sw = int(h * 0.125 + 0.5), int(w * 0.125 + 0.5)
    ty = torch.randint(-sh, sh + 1, (b, 1, 1), device=dev)
    tx = torch.randint(-sw, sw + 1, (b, 1, 1), device=dev)
    gy, gx = torch.meshgrid(torch.arange(h, device=dev), torch.arange(w, device=dev),
                            indexing="ij")
    gy = (gy[None] + ty + 1).clamp(0, h + 1)
    gx = (gx[None] + tx + 1).clamp(0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1])
    idx = (gy * (w + 2) + gx).view(b, 1, -1).expand(-1, x.size(1), -1)
    return padded.flatten(2).gather(2, idx).view_as(x)


def _aug_cutout(x: torch.Tensor) -> torch.Tensor:
    """A square of half the side, at a random place per image, set to zero."""
    b, dev = x.size(0), x.device
    h, w = x.shape[2:]
    ch, cw = int(h * 0.5 + 0.5), int(w * 0.5 + 0.5)
    oy = torch.randint(0, h + (1 - ch % 2), (b, 1, 1), device=dev) - ch // 2
    ox = torch.randint(0, w + (1 - cw % 2), (b, 1, 1), device=dev) - cw // 2
    gy, gx = torch.meshgrid(torch.arange(h, device=dev), torch.arange(w, device=dev),
                            indexing="ij")
    inside = ((gy[None] >= oy) & (gy[None] < oy + ch) & (gx[None] >= ox) & (gx[None] < ox + cw))
    return x * (~inside).unsqueeze(1).to(x.dtype)


_AUGMENTS = {"color": _aug_color, "translation": _aug_translation, "cutout": _aug_cutout}


def diff_augment(x: torch.Tensor, policy: str, p=1.0) -> torch.Tensor:
    """Differentiable augmentation (Zhao et al., 2020) of a batch in [-1, 1]: the same
    kind of random change is applied to real and generated images before D sees them,
    so D cannot memorise a small training set and G is not pushed to copy the changes.
    policy: comma-separated subset of color, translation, cutout. `p` (a number or a
    0-dim tensor, e.g. ADA's adaptive probability): each op changes each image with this
    probability; at the number 1 every image is changed and no extra draw is made."""
    if not policy:
        return x
    for name in policy.split(","):
        name = name.strip()
        if not name:
            continue
        if name not in _AUGMENTS:
            raise UserError(f"--diffaug: unknown policy {name!r} (use color, translation, cutout)")
        y = _AUGMENTS[name](x)
        if isinstance(p, (int, float)) and p >= 1:
            x = y
        else:
            keep = torch.rand(x.size(0), 1, 1, 1, device=x.device) < p
            x = torch.where(keep, y, x)
    return x


def attribute_loss(aux, labels) -> torch.Tensor:
    """Cross-entropy of D's (kind, colour, pattern) logits against labels (B, 3); a
    label of -100 (unknown, e.g. a pattern the caption does not give) is ignored, and a
    head whose labels are all unknown adds 0. No host synchronisation."""
    total = torch.zeros((), device=labels.device)
    for logits, target in zip(aux, labels.unbind(1)):
        known = (target >= 0).sum().clamp(min=1)
        total = total + F.cross_entropy(logits.float(), target, ignore_index=-100,
                                        reduction="sum") / known
    return total


def discriminator_loss(netD, real, wrong, fake, cond, loss: str = "bce", diffaug: str = "",
                       r1_gamma: float = 0.0, labels=None, aux_coef: float = 0.0,
                       fake_cond=None, aug_p=1.0, recon_coef: float = 0.0, ma_gp: float = 0.0):
    """StackGAN matching-aware D loss.

    real + matching text -> real; wrong image + this text -> fake; generated + text ->
    fake, with wrong and generated weighted by one half. When D has an unconditional
    head (Stage II), real -> real and generated -> fake are added to those terms.
    `loss` picks the BCE of StackGAN or the hinge loss; `diffaug` augments every D input;
    `r1_gamma` adds the R1 penalty gamma/2 * E|grad_x D(x, text)|^2 on real images;
    `aux_coef` > 0 adds the attribute cross-entropy of the real images (`labels`: kind,
    colour, pattern per image) when D has auxiliary heads. `fake_cond`: the generated
    images' text when it is not `cond` (a mode-seeking batch draws captions twice).
    `aug_p`: the probability of each DiffAugment op (a 0-dim tensor when adaptive).
    `recon_coef` > 0 adds the L1 of D's reconstructions of the (augmented) real images
    (FastGAN); `ma_gp` > 0 adds DF-GAN's matching-aware gradient penalty
    ma_gp * E|(grad_x, grad_text) D(x, text)|^6 on real images with their own text.
    Returns (loss, stats): stats are detached 0-dim tensors on the loss's device, so
    that no step waits for the device; read them only when logging. stats["d_real_sign"]
    is E[sign D(real)], the overfitting measure r of ADA.
    """
    cond = cond.detach()
    fake_cond = cond if fake_cond is None else fake_cond.detach()
    real_in = diff_augment(real, diffaug, aug_p)
    if r1_gamma > 0 or ma_gp > 0:
        real_in = real_in.detach().requires_grad_(True)
    real_cond = cond.detach().requires_grad_(True) if ma_gp > 0 else cond
    if recon_coef > 0:
        real_c, real_u, real_a, l_rec = netD(real_in, real_cond, recon=True)
    else:
        real_c, real_u, real_a = netD(real_in, real_cond)
    wrong_c, _, _ = netD(diff_augment(wrong, diffaug, aug_p), cond)
    fake_c, fake_u, _ = netD(diff_augment(fake.detach(), diffaug, aug_p), fake_cond)
    l_real, l_wrong = _d_term(real_c, True, loss), _d_term(wrong_c, False, loss)
    l_fake = _d_term(fake_c, False, loss)
    if real_u is not None:
        l_real = l_real + _d_term(real_u, True, loss)
        l_fake = l_fake + _d_term(fake_u, False, loss)
    total = l_real + 0.5 * (l_wrong + l_fake)
    stats = {"d_real": l_real, "d_wrong": l_wrong, "d_fake": l_fake,
             "d_real_prob": torch.sigmoid(real_c.float()).mean(),
             "d_fake_prob": torch.sigmoid(fake_c.float()).mean(),
             "d_real_sign": torch.sign(real_c.detach().float()).mean()}
    if recon_coef > 0:
        total = total + recon_coef * l_rec
        stats["d_recon"] = l_rec
    if ma_gp > 0:
        g_img, g_txt = torch.autograd.grad(real_c.float().sum(), (real_in, real_cond),
                                           create_graph=True)
        sq = g_img.float().pow(2).flatten(1).sum(1) + g_txt.float().pow(2).flatten(1).sum(1)
        l_gp = sq.pow(3).mean()  # |grad|^6, without the square root's kink at zero
        total = total + ma_gp * l_gp
        stats["ma_gp"] = l_gp
    if aux_coef > 0 and real_a is not None and labels is not None:
        l_aux = attribute_loss(real_a, labels)
        total = total + aux_coef * l_aux
        stats["d_aux"] = l_aux
    if r1_gamma > 0:
        out = real_c.float().sum() + (real_u.float().sum() if real_u is not None else 0)
        grad, = torch.autograd.grad(out, real_in, create_graph=True)
        r1 = grad.float().pow(2).flatten(1).sum(1).mean()
        total = total + 0.5 * r1_gamma * r1
        stats["r1"] = r1
    stats["d_loss"] = total
    return total, {k: v.detach() for k, v in stats.items()}


def mode_seeking_loss(fake: torch.Tensor, z: torch.Tensor, size: int = 16,
                      eps: float = 1e-5) -> torch.Tensor:
    """Mode seeking (Mao et al., MSGAN, 2019) for a batch whose rows i and i + n // 2
    share a caption: 1 / (mean |x_i - x_j| / mean |z_i - z_j| + eps). It grows as G draws
    the images of one caption alike from different noise. The images are compared
    average-pooled to `size` px, so that pixel-level speckle does not count as variety:
    only differences in shape, shade and layout do."""
    h = len(fake) // 2
    x = fake.float()
    if x.shape[-1] > size:
        x = F.adaptive_avg_pool2d(x, size)
    image_gap = (x[:h] - x[h:2 * h]).abs().mean()
    noise_gap = (z[:h].float() - z[h:2 * h].float()).abs().mean()
    return 1 / (image_gap / noise_gap + eps)


def generator_loss(netD, fake, cond, mu, logvar, kl_coef: float, loss: str = "bce",
                   diffaug: str = "", labels=None, aux_coef: float = 0.0, z=None,
                   ms_coef: float = 0.0, aug_p=1.0):
    """Fool D (conditional, plus unconditional when present) + kl_coef * KL, plus
    aux_coef * the attribute cross-entropy of the generated images against their
    captions' `labels` when D has auxiliary heads, plus ms_coef * mode_seeking_loss of
    `fake` drawn from noise `z` (rows i and i + n // 2 share a caption) when ms_coef > 0.
    `aug_p`: DiffAugment's probability, as in discriminator_loss."""
    fake_c, fake_u, fake_a = netD(diff_augment(fake, diffaug, aug_p), cond.detach())
    l_adv = _g_term(fake_c, loss)
    if fake_u is not None:
        l_adv = l_adv + _g_term(fake_u, loss)
    l_kl = kl_loss(mu, logvar)
    total = l_adv + kl_coef * l_kl
    stats = {"g_adv": l_adv, "kl": l_kl}
    if aux_coef > 0 and fake_a is not None and labels is not None:
        l_aux = attribute_loss(fake_a, labels)
        total = total + aux_coef * l_aux
        stats["g_aux"] = l_aux
    if ms_coef > 0:
        l_ms = mode_seeking_loss(fake, z)
        total = total + ms_coef * l_ms
        stats["ms"] = l_ms
    stats["g_loss"] = total
    return total, {k: v.detach() for k, v in stats.items()}


# ------------------------------------------------------------------------- writing
#
# Every file the repository writes goes through `atomic_path` (a temporary file beside
# it, renamed into place: `_atomic_write` for files written from Python, directly for
# the image cache's memory map) and every folder through `make_dir`. A write that fails
# there, for want of space or permission, or with a file where a folder should be, is
# one WriteError naming the file and what is missing; the file it would have replaced
# is left as it was.

class WriteError(UserError, OSError):
    """A file that could not be written (a folder that is not writable, a full disk): a
    one-line error for the command lines, and still an OSError for callers that carry on."""


_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_NO_PERMISSION = {errno.EACCES, errno.EPERM, errno.EROFS}


def human_bytes(n: float) -> str:
    """A size in the units a disk is read in: 512 B, 20.5 kB, 3.4 MB, 1.23 GB."""
    if n < 1e3:
        return f"{int(n)} B"
    if n < 1e6:
        return f"{n / 1e3:.1f} kB"
    return f"{n / 1e6:.1f} MB" if n < 1e9 else f"{n / 1e9:.2f} GB"


def free_bytes(path) -> int | None:
    """Free bytes on the disk that holds `path` (its nearest existing folder); None when
    that cannot be read."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def _os_error(e: BaseException):
    """The OSError behind `e`: itself, or the one its chain holds. torch.save reports a
    full disk as RuntimeError("[enforce fail at inline_container.cc:...] unexpected pos
    ...") raised while handling the OSError of the file's write."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _torch_write_failure(e: BaseException) -> bool:
    """torch's serialiser failing without an OSError to say why (its own file writer)."""
    return isinstance(e, RuntimeError) and any(
        s in str(e) for s in ("inline_container.cc", "PytorchStreamWriter", "unexpected pos"))


def _file_in_the_way(path: Path) -> Path | None:
    """The first part of `path` that exists and is not a folder."""
    for p in reversed([path, *path.parents]):
        if p.exists() and not p.is_dir():
            return p
    return None


def write_error(path, e: BaseException, action: str = "write", fix: str = ""):
    """The one-line WriteError for a failure `e` to `action` (write, create the folder)
    `path`, naming what is missing; None when `e` is no write failure (a bug, Ctrl-C).
    `fix`: what to do, when the caller knows better than "free some space"."""
    os_err = _os_error(e)
    if os_err is None and not _torch_write_failure(e):
        return None
    path = Path(path)
    code = os_err.errno if os_err is not None else None
    free = free_bytes(path)
    blocker = _file_in_the_way(path)
    if code in _NO_SPACE or (os_err is None and free is not None and free < 1 << 20):
        reason = (os_err.strerror if os_err is not None and os_err.strerror
                  else "No space left on device")
        reason += f" ({human_bytes(free)} free there)" if free is not None else ""
        fix = fix or "free some space or choose a folder on another disk"
    elif code in _NO_PERMISSION:
        reason, fix = os_err.strerror or "Permission denied", fix or "choose a writable folder"
    elif blocker is not None and isinstance(os_err, (FileExistsError, NotADirectoryError)):
        reason = f"{blocker} is a file, not a folder"
        fix = fix or "choose another name or folder"
    elif os_err is not None:
        reason = os_err.strerror or first_line(os_err)
    else:
        reason = f"the write failed ({first_line(e)[:120]})"
    return WriteError(f"cannot {action} {path}: {reason}" + (f"; {fix}" if fix else ""))


@contextlib.contextmanager
def writing(path, action: str = "write", fix: str = ""):
    """Run the block that writes `path`; a failure to write becomes write_error's
    one-line WriteError (other exceptions pass unchanged)."""
    try:
        yield
    except WriteError:
        raise
    except Exception as e:
        err = write_error(path, e, action, fix)
        if err is None:
            raise
        raise err from None


def make_dir(path, fix: str = "") -> Path:
    """The folder `path`, created with its parents when missing: the one folder maker
    of every writer (a file in the way is a one-line error, not FileExistsError)."""
    path = Path(path)
    if not path.is_dir():
        with writing(path, "create the folder", fix):
            path.mkdir(parents=True, exist_ok=True)
    return path


def check_writable_dir(path) -> Path:
    """The folder `path` (made when missing) once a file could be made in it, so that an
    output folder that cannot be written fails before any work is done."""
    path = make_dir(path)
    with writing(path, "write in the folder"), \
            tempfile.NamedTemporaryFile(dir=path, prefix=".write_test"):
        pass
    return path


@contextlib.contextmanager
def atomic_path(path, action: str = "write", fix: str = ""):
    """A temporary file name beside `path` (its folder made when missing) for the block
    to write; renamed over `path` when the block ends, removed when it fails. Failures
    to write are write_error's one-line WriteError."""
    path = Path(path)
    make_dir(path.parent, fix)
    with writing(path, action, fix):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            yield Path(tmp)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def _open_for_writing(path):
    """The binary file every _atomic_write writes through (a test's small disk wraps it)."""
    return open(path, "wb")


def _atomic_write(path: Path, write, action: str = "write", fix: str = "", sync: bool = True):
    """Call write(f) on a binary file that replaces `path` once it is complete (flushed
    to the disk first unless sync=False, for outputs that are cheap to make again)."""
    with atomic_path(path, action, fix) as tmp, _open_for_writing(tmp) as f:
        write(f)
        f.flush()
        if sync:
            os.fsync(f.fileno())


def reserve(path, nbytes: int):
    """Claim `nbytes` of disk for the file at `path` now, so that a full disk is an
    OSError here rather than a crash later: the pages of a memory map are only given
    disk space when written, and a page the disk has no room for kills the process
    (SIGBUS). A no-op where the system cannot reserve space."""
    if nbytes <= 0 or not hasattr(os, "posix_fallocate"):
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, nbytes)
    except OSError as e:
        if e.errno in _NO_SPACE:
            raise OSError(e.errno, f"{e.strerror} for its {human_bytes(nbytes)}") from None
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    finally:
        os.close(fd)


def copy_file(src, dst) -> Path:
    """Copy the file `src` to `dst` atomically (as _atomic_write writes)."""
    dst = Path(dst)
    with open(src, "rb") as f:
        _atomic_write(dst, lambda out: shutil.copyfileobj(f, out))
    return dst


# --------------------------------------------------------------------------- grids

def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N,3,H,W) in [-1,1] -> (N,H,W,3) uint8."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


LABEL_FONT = "DejaVuSans.ttf"


@functools.lru_cache(maxsize=1)
def label_font_path() -> str | None:
    """DejaVu Sans, which matplotlib ships in its data folder (what matplotlib.get_data_path()
    names, found here without importing matplotlib): it has the glyphs of accented Latin,
    Cyrillic and Greek, which PIL's default font draws as empty boxes. None without it."""
    spec = importlib.util.find_spec("matplotlib")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "mpl-data" / "fonts" / "ttf" / LABEL_FONT
        if path.is_file():
            return str(path)
    return None


def _font(size: int):
    """The label font at `size` px: DejaVu Sans, else PIL's default font."""
    path = label_font_path()
    if path is not None:
        try:
            return ImageFont.truetype(path, size)
        except OSError:  # Pillow built without FreeType
            pass
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow built without FreeType
        return ImageFont.load_default()


def wrap_text(text: str, font, width: float) -> list[str]:
    """`text` in lines no wider than `width` pixels in `font`, broken between words; a
    word wider than a line is broken inside."""
    lines, line = [], ""
    for word in text.split():
        if font.getlength(f"{line} {word}" if line else word) <= width:
            line = f"{line} {word}" if line else word
            continue
        if line:
            lines.append(line)
        while len(word) > 1 and font.getlength(word) > width:
            k = max(1, next((k for k in range(len(word) - 1, 0, -1)
                             if font.getlength(word[:k]) <= width), 1))
            lines.append(word[:k])
            word = word[k:]
        line = word
    return lines + [line] if line else lines


def save_grid(images: torch.Tensor, path, nrow: int = 8, row_labels=None) -> Path:
    """Write a PNG grid of (N,3,H,W) images in [-1,1], `nrow` per row. `row_labels`: one
    per row, printed in a column to the left (in DejaVu Sans: Cyrillic and accents too)."""
    images = images.detach().float().cpu()
    n, _, h, w = images.shape
    font_size = max(11, h // 14)  # readable beside 256 px images too
    pad = 2
    cell_w, cell_h = w + pad, h + pad
    font = _font(font_size)
    line_h = font_size + 3
    label_w = 0
    if row_labels is not None:
        label_w = 200 * font_size // 11
        row_wrapped = [wrap_text(t, font, label_w - 2 * pad)[: max(1, h // line_h)]
                       for t in row_labels]
    rows = (n + nrow - 1) // nrow
    canvas = Image.new("RGB", (label_w + nrow * cell_w + pad, rows * cell_h + pad), "white")
    pix = to_uint8(images)
    for i in range(n):
        r, c = divmod(i, nrow)
        canvas.paste(Image.fromarray(pix[i]), (label_w + pad + c * cell_w, pad + r * cell_h))
    if row_labels is not None:
        draw = ImageDraw.Draw(canvas)
        for r, lines in enumerate(row_wrapped[:rows]):
            for k, line in enumerate(lines):
                draw.text((pad, pad + r * cell_h + k * line_h), line, fill=(0, 0, 0), font=font)
    path = Path(path)
    _atomic_write(path, lambda f: canvas.save(f, format="PNG"))
    return path


# --------------------------------------------------------------------- checkpoints

# the entries of a training checkpoint; a generator needs the first two (and
# stage1_config for Stage II), resuming a training run needs RESUME_KEYS too;
# "vocabulary": the words of the training captions (captions.caption_vocabulary),
# which checkpoints written before it lack
CHECKPOINT_KEYS = ("netG", "config", "netD", "netG_ema", "optG", "optD", "schedG", "schedD",
                   "epoch", "batch", "step", "rng", "wandb_id", "stage1_config", "vocabulary",
                   "augment")
RESUME_KEYS = ("netD", "optG", "optD", "schedG", "schedD", "epoch", "step")
# the entries of a generator exported to share (sample.export_generator): its EMA
# weights as netG, settings, text model, vocabulary and the SHA-256 of the weights
EXPORT_KEYS = ("netG", "config", "stage1_config", "text_model", "vocabulary", "weights_sha256",
               "exported_from")


def _feed(h, obj):
    """Hash `obj` (nested dicts, lists, tensors, plain values) in a canonical order."""
    if torch.is_tensor(obj):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}:".encode())
        for k in sorted(obj, key=repr):
            _feed(h, k)
            _feed(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update(f"{type(obj).__name__[0]}{len(obj)}:".encode())
        for v in obj:
            _feed(h, v)
    else:
        h.update(f"{type(obj).__name__}={obj!r};".encode("utf-8", "surrogatepass"))


def state_bytes(obj) -> int:
    """The bytes of the tensors in `obj` (nested dicts, lists, tensors): what a
    checkpoint of it takes on disk, but for a few kilobytes of structure."""
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(state_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(state_bytes(v) for v in obj)
    return 0


def weights_sha256(weights: dict) -> str:
    """The SHA-256 of a state dict's names, shapes, dtypes and bytes (in name order):
    the fingerprint an exported generator records of its weights."""
    h = hashlib.sha256()
    _feed(h, weights)
    return h.hexdigest()


def checksums(state: dict) -> dict:
    """{entry: sha256 hex digest of its tensors' bytes and its plain values} for every
    entry of a checkpoint but "checksums" itself."""
    out = {}
    for key, value in state.items():
        if key != "checksums":
            h = hashlib.sha256()
            _feed(h, value)
            out[key] = h.hexdigest()
    return out


def verify_checksums(state: dict, path) -> bool:
    """Check the checksums recorded in `state` (removing them from it): a UserError
    "damaged checkpoint" naming the entries that differ. False when none are recorded."""
    recorded = state.pop("checksums", None)
    if recorded is None:
        return False
    actual = checksums(state)
    if not isinstance(recorded, dict):
        recorded = {}
    bad = sorted(k for k in set(actual) | set(recorded) if actual.get(k) != recorded.get(k))
    if bad:
        raise UserError(f"damaged checkpoint: {path}: the checksums recorded when it was saved "
                        f"do not match its entries {', '.join(map(str, bad))[:200]} (use another "
                        "copy, e.g. one of checkpoints/*.pt)")
    return True


def save_checkpoint(state: dict, path) -> Path:
    """Write `state` atomically with a checksum of every entry (load_checkpoint checks it)."""
    path = Path(path)
    state = {**state, "checksums": checksums(state)}
    _atomic_write(path, lambda f: torch.save(state, f))
    return path


def torch_load_reason(e: BaseException) -> str:
    """The gist of a torch.load failure in one short line (torch's own messages run to
    paragraphs of advice, including loading the file with code execution allowed)."""
    text = str(e)
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().split("\n")[0]
        detail = detail.split(" Please use")[0].strip() or "unreadable data"
        return f"it holds more than plain weights, refused ({detail[:150]})"
    return first_line(e).split(". This is")[0][:200]


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and all(isinstance(k, str) and torch.is_tensor(v)
                                         for k, v in obj.items())


def load_checkpoint(path, map_location="cpu", resume: bool = False) -> dict:
    """A checkpoint of this repo, read with pickles refused (nothing in it runs code) and
    checked: its checksums, a generator state dict, a config within FIELD_RULES (and
    with resume=True the optimizer, scheduler and step entries). An exported generator
    (sample.export_generator) loads the same way, its weights checked against their
    recorded SHA-256; it cannot resume training. Anything else is a one-line
    UserError, raised before anything is written."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle errors, truncated zip, foreign objects refused by weights_only
        raise UserError(f"{path} is not a readable checkpoint: {torch_load_reason(e)}") from None
    if not isinstance(state, dict) or "netG" not in state:
        raise UserError(f"{path} is not a checkpoint written by this repo (no 'netG' entry)")
    exported = "weights_sha256" in state
    if exported:
        verify_weights(state, path, resume)
    checked = verify_checksums(state, path)
    unknown = sorted(map(str, set(state) - set(EXPORT_KEYS if exported else CHECKPOINT_KEYS)))
    if unknown and not checked:
        raise UserError(f"{path} is not a checkpoint written by this repo (unknown entries: "
                        f"{', '.join(unknown)[:200]})")
    need = ("netG", "config") + (RESUME_KEYS if resume else ())
    missing = [k for k in need if k not in state]
    if missing:
        raise UserError(f"{path} lacks the entries {', '.join(missing)}: "
                        + ("a training run resumes only from a checkpoint written by training"
                           if resume else "it is not a generator checkpoint of this repo"))
    for key in ("netG", "netD", "netG_ema"):
        if key in state and not (_is_state_dict(state[key]) or (key != "netG" and state[key] is None)):
            raise UserError(f"{path}: its '{key}' entry is not a state dict of weights")
    vocabulary = state.get("vocabulary")
    if vocabulary is not None and not (isinstance(vocabulary, list)
                                       and all(isinstance(w, str) for w in vocabulary)):
        raise UserError(f"{path}: its 'vocabulary' entry is not a list of words")
    if resume and not all(isinstance(state[k], int) and state[k] >= 0
                          for k in ("epoch", "step") + (("batch",) if "batch" in state else ())):
        raise UserError(f"{path}: its epoch, batch and step entries are not counts")
    _checked_config(state, "config", path)
    if state["config"].get("stage") == 2 or state.get("stage1_config") is not None:
        _checked_config(state, "stage1_config", path)
    if not checked:
        print(f"note: {path} records no checksum (saved by an earlier version); loaded unchecked")
    return state


def verify_weights(state: dict, path, resume: bool = False) -> None:
    """Check an exported generator: the SHA-256 of its weights is the one recorded at
    export, and it is not asked to resume training (it holds no D or optimiser)."""
    if not _is_state_dict(state["netG"]) or weights_sha256(state["netG"]) != state["weights_sha256"]:
        raise UserError(f"damaged generator: {path}: the SHA-256 of its weights is not the "
                        "one recorded when it was exported (get the file again, or export "
                        "it again from its training checkpoint)")
    if resume:
        raise UserError(f"{path} is an exported generator (python main.py --export), which "
                        "holds no discriminator or optimiser state: training resumes only from "
                        "a training checkpoint, e.g. OUT_DIR/stage1/last.pt")


def _checked_config(state: dict, key: str, path) -> None:
    cfg = state.get(key)
    if not isinstance(cfg, dict):
        raise UserError(f"{path}: its '{key}' entry is not a config")
    try:
        Config.from_dict(cfg).validate()
    except (UserError, TypeError) as e:
        raise UserError(f"{path}: its '{key}' entry does not hold usable settings "
                        f"({first_line(e)})") from None


def check_arch(saved: dict, cfg: Config, path) -> None:
    """Raise a UserError naming every architecture setting that differs."""
    diffs = [f"{k}={saved.get(k)!r} (now {getattr(cfg, k)!r})" for k in ARCH_FIELDS
             if k in saved and saved[k] != getattr(cfg, k)]
    if diffs:
        raise UserError(f"{path} was made with other model settings: {', '.join(diffs)}; "
                        "pass the same values (or leave them unset to use the checkpoint's)")


# ------------------------------------------------------------------------- logging

class LossLog:
    """Every logged step goes to WandB (when a run is given) and to a CSV; a loss-curve
    PNG beside the CSV lets users without a WandB account see the curves."""

    def __init__(self, csv_path, wandb_run=None, truncate_after: int = 0):
        """A fresh log, or with truncate_after=k (a resumed run) the old rows up to step k."""
        self.csv_path = Path(csv_path)
        self.png_path = self.csv_path.with_suffix(".png")
        self.run = wandb_run
        self.rows: list[dict] = []
        if truncate_after and self.csv_path.exists():
            import pandas as pd
            try:
                old = pd.read_csv(self.csv_path)
                self.rows = old[old["step"] <= truncate_after].to_dict("records")
            except Exception:
                self.rows = []

    def log(self, step: int, values: dict):
        row = {"step": step, **{k: float(v) for k, v in values.items()}}
        self.rows.append(row)
        if self.run is not None:
            self.run.log(values, step=step)

    def log_image(self, step: int, path, key: str = "samples"):
        """Log the image file at `path` (a snapshot's sample grid) to WandB under `key`, at
        `step`; nothing without a run (the grid stays in the samples folder)."""
        if self.run is not None:
            import wandb  # installed: a run exists
            self.run.log({key: wandb.Image(str(path))}, step=step)

    def flush(self):
        if not self.rows:
            return
        import pandas as pd
        df = pd.DataFrame(self.rows)
        _atomic_write(self.csv_path, lambda f: f.write(df.to_csv(index=False).encode()))
        cols = [c for c in ("d_loss", "g_loss", "g_adv", "kl") if c in df.columns]
        if cols:
            plot_curves(df["step"].to_numpy(), {c: df[c].to_numpy() for c in cols}, self.png_path)


def plot_curves(steps, series: dict, path, size=(900, 480)):
    """Write a line chart of `series` ({name: values per step}) against `steps` as a PNG
    of `size` pixels; each curve is smoothed by a moving average over 1/50 of its points
    (over the points there are, at its ends)."""
    # matplotlib is imported here, not at the top: only training draws plots, and its
    # import would add a third of a second to every start of generation and the page
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dpi = 100
    fig = Figure(figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    steps = np.asarray(steps, dtype=float)
    for name, v in series.items():
        v = np.asarray(v, dtype=float)
        box = np.ones(max(1, len(v) // 50))
        if len(v):
            v = np.convolve(v, box, mode="same") / np.convolve(np.ones_like(v), box, mode="same")
        ax.plot(steps, v, label=name, linewidth=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    path = Path(path)
    _atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))
    return path


def init_wandb(cfg: Config, job_type: str, run_dir, run_id=None):
    """A WandB run, or None when disabled or wandb cannot start (the CSV log still works).
    With run_id (from a checkpoint) a resumed training continues the same WandB run.

    WandB's own variables apply as usual, below the flags: the mode is --wandb, else
    WANDB_MODE, else online with WANDB_API_KEY and offline without; the project is
    --wandb_project, else WANDB_PROJECT, else fashion-stackgan (so a flag that names
    the default reads as no flag); the run's files go under WANDB_DIR, else `run_dir`."""
    mode = cfg.resolved_wandb_mode()
    if mode == "disabled":
        return None
    project = cfg.wandb_project
    if project == Config.wandb_project:
        project = os.environ.get("WANDB_PROJECT") or project
    try:
        import wandb
        return wandb.init(project=project, mode=mode, config=cfg.to_dict(), job_type=job_type,
                          dir=os.environ.get("WANDB_DIR") or str(run_dir),
                          reinit="finish_previous", id=run_id, resume="allow" if run_id else None)
    except Exception as e:
        print(f"wandb could not start ({first_line(e)}); logging to CSV only")
        return None
