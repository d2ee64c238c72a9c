"""The presets and one typed config for every run (the vocabulary is in captions.py).

Defaults follow StackGAN (Zhang et al., 2017): Stage-I 64x64, Stage-II 256x256,
z 100, condition 128, Adam(2e-4, betas 0.5/0.999), LR halved every 20 epochs,
KL coefficient 2.0. Additions are on by default where the evaluation supports them:
an EMA generator (ema_decay 0.999, warmed up) draws the samples, and the text reaches
the picture through D's own reading of the sentence (d_cond "text"), text-conditioned
BatchNorm in every G block, set by the sentence embedding itself rather than by the
noisy CA sample (g_fusion "affine_text"), attribute heads in D (aux_coef 1),
"wrong" pairs that differ in kind, colour or pattern (the builtin preset adds mode
seeking, ms_coef 0.2, which keeps the images of one prompt apart). `--ema_decay 0
--d_cond mu --g_fusion input --aux_coef 0` restores the original. Every
field can be set from the command line in main.py (`--name value`), so there is no YAML
and no second source of truth.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from captions import KINDS  # the kinds a category_map may name


class UserError(Exception):
    """A problem with the user's input or files: the command lines print it as one
    `error: ...` line (utils.run_cli) without a traceback."""


# DFMM file-name category token -> garment kind. Tokens not listed are dropped
# (Shorts, Skirts, Blouses_Shirts, Jackets_Coats, ...). DFMM has no shoe
# category: the "shoes" kind is cut out of parsing label 11 (see datasets.py).
CATEGORY_MAP = {
    "Tees_Tanks": "t-shirt",
    "Graphic_Tees": "t-shirt",
    "Dresses": "dress",
    "Pants": "pants",
    "Denim": "pants",
    "Leggings": "leggings",
}

# DFMM human-parsing ids (segm/<name>_segm.png) of each kind's region.
PARSING_LABELS = {"t-shirt": 1, "dress": 4, "pants": 5, "leggings": 6, "shoes": 11}

# Settings used when no --data_dir is given: the built-in synthetic garments are
# simple, so narrower networks learn them within minutes on a laptop CPU.
# Mode seeking is part of it: on these garments a generator that follows the words
# otherwise draws one garment per prompt (on real photos it varies them by itself).
BUILTIN_PRESET = dict(gf_dim=32, df_dim=32, epochs=30, lr_decay_epoch=20, batch_size=32,
                      snapshot_interval=5, ms_coef=0.2)
# What sets the BatchNorm scale and shift of G's up blocks (Config.g_fusion; see model.py)
FUSIONS = ("input", "affine", "affine_text", "affine_text_z")
# How G's up blocks double the side (Config.g_upsample; see model.upsample)
UPSAMPLES = ("nearest", "bilinear")
# Real photos on a CPU (a few thousand photos, Stage I in 30 minutes, Stage II in 45 with
# --max_minutes; see PHOTOS_STAGE2 for Stage II's own widths). StackGAN's discriminator
# without augmentation: at equal wall time on clothing-small (16 and 22 minutes,
# docs/results.md) it beat DiffAugment, ADA and FastGAN's reconstruction, which stay
# switches; but over 10-14k steps it learns the photos by heart, so it has lazy R1 (every
# 16th step): 30 minutes, FD-garment 0.89-1.03x the floor with it on three seeds,
# 1.31-1.38x without on two (docs/results.md)
PHOTOS_PRESET = dict(gf_dim=32, df_dim=32, batch_size=32, epochs=1000, lr_decay_epoch=100,
                     snapshot_interval=25, r1_gamma=0.05, reg_every=16)
# Stage II of a preset: what differs from its Stage I (a 256 px step costs ~10x a 64 px one)
# builtin: at 256 px StackGAN's D wins within 170 steps and G answers with outlines that
# cost colour (0.99 -> 0.75); DiffAugment + reconstruction, without mode seeking, keep it at
# 0.97; the super-resolution term brings FD to 0.81x the drafts' (0.96x without) and kind
# from 0.77 to 0.90 in the same 10 minutes; 3 epochs (504 steps) take about 11
BUILTIN_STAGE2 = dict(gf_dim=16, df_dim=16, batch_size=16, epochs=3, lr_decay_epoch=100,
                      snapshot_interval=1, s2_output="residual", skip_excitation=True,
                      ms_coef=0.0, diffaug="translation,cutout", recon_coef=1.0, sr_coef=10.0)
# photos, Stage II: the small-data D here too (500 steps on clothing-small: FD 1.08x its
# upscaled drafts' against 1.42x with StackGAN's D, which wins at 256 px within minutes),
# and the super-resolution term (7 minutes: 0.93x its drafts' with it, 1.08x without) at
# weight 100: once D wins (after ~450 steps) weight 10 lets G trade the photos' detail for
# streaks (1,060 steps: 1.12x its drafts'), weight 100 holds it (1.01x); but without
# draft_skip it holds it by adding nothing (45 min: draft change 0.0000); with it, 45 min
# move the drafts 0.05 on two seeds, at FD 0.99x its drafts' on one and 1.20x on the other;
# 10 epochs: on the lazy-R1 Stage I (two seeds, clothing-small) Stage II is nearest the photos
# after 10 epochs (0.86-0.87x its drafts'); by 15-19 it lays speckle over them and shifts their
# colours on one seed (0.99x, then 1.18x) (docs/results.md)
PHOTOS_STAGE2 = dict(gf_dim=16, df_dim=16, batch_size=16, epochs=10, lr_decay_epoch=1000,
                     snapshot_interval=5, s2_output="residual", skip_excitation=True,
                     draft_skip=True, diffaug="translation,cutout", recon_coef=1.0, sr_coef=100.0,
                     r1_gamma=0.0, reg_every=1)  # Stage I's R1 not measured at 256 px
# Named presets (main.py --preset): "stackgan" is Config's own defaults, the paper's widths.
PRESETS = {"builtin": BUILTIN_PRESET, "stackgan": {}, "photos": PHOTOS_PRESET}
PRESETS_STAGE2 = {"builtin": BUILTIN_STAGE2, "stackgan": {}, "photos": PHOTOS_STAGE2}


def preset_values(name: str, stage: int) -> dict:
    """The settings of preset `name` for `stage` (Stage II: its Stage-II values on top)."""
    return {**PRESETS[name], **(PRESETS_STAGE2[name] if stage == 2 else {})}


@dataclass
class Config:
    # data
    data_dir: Optional[str] = None  # None: the built-in synthetic dataset under builtin_dir
    builtin_dir: str = "data/synthetic"
    builtin_per_kind: int = 600
    cache_dir: Optional[str] = None  # None: <data_dir>/cache
    embeddings_path: Optional[str] = None  # None: <data_dir>/embeddings.pickle
    category_map: dict = field(default_factory=lambda: dict(CATEGORY_MAP))
    parsing_labels: dict = field(default_factory=lambda: dict(PARSING_LABELS))
    min_region_frac: float = 0.002  # a segm region smaller than this share of the image is ignored
    crop_margin: float = 0.08  # margin around a segm region crop, as a share of its size
    max_samples: int = 0  # 0: all
    # "wrong" pairs differ from the real image in kind, colour or pattern, drawn uniformly from
    # all such samples; this extra share of them is drawn from the real image's own kind only
    # (a dress of another colour or pattern)
    wrong_same_kind: float = 0.0
    # text
    text_model: str = "all-MiniLM-L6-v2"
    text_dim: int = 384
    # model
    stage: int = 1
    stage1_size: int = 64
    stage2_size: int = 256
    z_dim: int = 100
    condition_dim: int = 128
    gf_dim: int = 128  # Stage-I G starts at gf_dim*8 channels; Stage-II G works at gf_dim*4
    # Stage-I G's up blocks halve their channels from gf_dim*8 but keep at least this many
    # (StackGAN: 8, a floor its own widths never reach; every preset keeps it; 32 is
    # measured in docs/results.md)
    g_min_channels: int = 8
    # Stage-I G draws at this many times stage1_size and averages each square of that
    # side down to one pixel, as the training images were area-downscaled from photos
    # (StackGAN: 1, drawn at stage1_size; docs/results.md measures 2)
    g_supersample: int = 1
    # how every up block of G (both stages) doubles the side before its 3x3 conv: "nearest"
    # (StackGAN) | "bilinear"
    g_upsample: str = "nearest"
    df_dim: int = 64
    r_num: int = 2  # residual blocks in Stage-II G
    # text conditioning (the StackGAN originals: g_fusion "input", d_cond "mu")
    # input: text joins the noise at 4x4 | affine: and the CA sample c sets every up block's
    # BN scale and shift | affine_text: the sentence embedding itself sets them (no CA noise)
    # | affine_text_z: the sentence embedding and the noise z (DF-GAN)
    g_fusion: str = "affine_text"
    d_cond: str = "text"  # text: D projects the sentence embedding itself | mu: D gets G's CA mean
    # training
    batch_size: int = 64
    epochs: int = 120
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    lr_decay_epoch: int = 20  # LR halves every this many epochs
    kl_coef: float = 2.0
    # >0: mode seeking (MSGAN): G draws two images of each caption in a batch from different
    # noise, and this weight times 1 / (their distance at 16 px / their noise distance)
    # keeps them apart, so one prompt gives varied garments; 0: off, as StackGAN (the
    # builtin preset uses 0.2; 0 here, because this costs FD-garment on real photos)
    ms_coef: float = 0.0
    # >0: D also names each real image's kind, colour and pattern (auxiliary heads) and G is
    # trained to make its images named as their caption's; 0: off, as StackGAN
    aux_coef: float = 1.0
    # >0: an exponential moving average of G's weights draws the samples and is saved as
    # netG_ema, with BatchNorm statistics recomputed for its own weights (0: off, as StackGAN)
    ema_decay: float = 0.999
    # small-data / stability switches (the defaults are StackGAN's original choices)
    loss: str = "bce"  # bce (StackGAN) | hinge
    d_norm: str = "bn"  # discriminator normalisation: bn (StackGAN) | sn (spectral norm, no BN)
    # DiffAugment (Zhao et al., 2020): the same random change of every image D sees, real,
    # wrong and generated, in D's step and in G's, e.g. "translation,cutout" ("color" also
    # shifts hue and saturation: a caption's colour word no longer matches; "" off, as StackGAN)
    diffaug: str = ""
    # the probability that each DiffAugment op changes an image; with ada_target > 0 it
    # starts at 0 and adapts (ADA, Karras et al., 2020) so that the share of real images D
    # scores as real, r = E[sign D(real)], stays near ada_target
    aug_p: float = 1.0
    ada_target: float = 0.0  # >0: adaptive aug_p towards this r (ADA's 0.6); 0: aug_p fixed
    ada_kimg: float = 100.0  # thousands of images over which the adaptive p can move from 0 to 1
    # >0: D's 8x8 and 16x16 features must reconstruct the real image (whole, and one random
    # quarter) through small decoders, L1 times this weight (FastGAN's self-supervised D,
    # Liu et al., 2021, with L1 for its LPIPS); 0: off, as StackGAN
    recon_coef: float = 0.0
    # >0: DF-GAN's matching-aware zero-centred gradient penalty on D(real image, its text):
    # this weight times the mean of |(grad_image, grad_text)|^6; 0: off, as StackGAN
    ma_gp: float = 0.0
    r1_gamma: float = 0.0  # >0: R1 gradient penalty on real images
    # the gradient penalties (r1_gamma, ma_gp) on every reg_every-th step only, weighted by
    # reg_every (StyleGAN2's lazy regularisation: the same pull for 1/reg_every of the
    # double backward's cost); 1: every step
    reg_every: int = 1
    # Stage II, >0: G must also rebuild each real stage2_size photo from that photo scaled
    # down to stage1_size (and its caption), L1 times this weight: a super-resolution
    # target that tells G what detail a draft lacks (0: off, as StackGAN)
    sr_coef: float = 0.0
    # Stage II's output: "redraw" (StackGAN: a new image from its features) | "residual"
    # (detail added to the bicubic upscaling of its Stage-I draft, so it starts from the draft)
    s2_output: str = "redraw"
    # Stage II: FastGAN's skip-layer excitation, the 16x16 features gating the channels of
    # every up block from 64 px on (n: off, as StackGAN)
    skip_excitation: bool = False
    # Stage II: the draft's own features at full draft size (the encoder's first layer) join
    # the up path where it reaches stage1_size, so that detail can follow the draft's edges
    # (without it, Stage II sees its draft only through 16x16 features; n: off, as StackGAN)
    draft_skip: bool = False
    max_steps: int = 0  # >0: stop with a checkpoint after this many steps in all (0: run every epoch)
    # >0: stop as on Ctrl-C (checkpoint, grid, log, the resume line) once this invocation has
    # run this many minutes (0: no time limit)
    max_minutes: float = 0.0
    snapshot_interval: int = 10  # epochs between checkpoints and sample grids
    # epoch_*.pt kept in checkpoints/ besides last.pt: older ones are removed once a new one
    # is safely written (0: only last.pt is written; interrupted.pt goes with the next one)
    keep_checkpoints: int = 2
    log_interval: int = 10  # steps between log rows
    seed: int = 0
    out_dir: str = "output"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    num_threads: int = 0  # 0: torch default
    # speed
    amp: str = "auto"  # bf16 autocast of forward passes: auto (CUDA, or a CPU with bf16 units) | on | off
    channels_last: bool = True  # NHWC memory layout for the convolutions
    tf32: bool = True  # CUDA: TF32 matmuls and convolutions
    compile: bool = False  # torch.compile G and D
    # logging
    wandb_project: str = "fashion-stackgan"
    wandb_mode: Optional[str] = None  # online | offline | disabled; None: offline without an API key
    # generation
    n_samples: int = 8  # images per prompt

    @property
    def image_size(self) -> int:
        return self.stage1_size if self.stage == 1 else self.stage2_size

    def resolved_data_dir(self) -> Path:
        return Path(self.data_dir if self.data_dir else self.builtin_dir)

    def resolved_cache_dir(self) -> Path:
        """--cache_dir, else DATA_DIR/cache, or side_cache_dir for a read-only DATA_DIR."""
        if self.cache_dir:
            return Path(self.cache_dir)
        data = self.resolved_data_dir()
        return side_cache_dir(data) if read_only_dir(data) else data / "cache"

    def resolved_embeddings_path(self) -> Path:
        """--embeddings_path, else DATA_DIR/embeddings.pickle (beside the image cache for a
        read-only DATA_DIR)."""
        if self.embeddings_path:
            return Path(self.embeddings_path)
        data = self.resolved_data_dir()
        return (side_cache_dir(data) if read_only_dir(data) else data) / "embeddings.pickle"

    def resolved_wandb_mode(self) -> str:
        """--wandb, else WANDB_MODE, else online with WANDB_API_KEY and offline without."""
        if self.wandb_mode:
            return self.wandb_mode
        env = os.environ.get("WANDB_MODE", "").strip().lower()
        if env:  # wandb's old names included; a wrong value reaches wandb, which says so
            return {"dryrun": "offline", "run": "online"}.get(env, env)
        return "online" if os.environ.get("WANDB_API_KEY") else "offline"

    def validate(self) -> "Config":
        """Raise a UserError naming the first setting whose value is out of its range
        (FIELD_RULES) or that does not fit another setting."""
        for f in dataclasses.fields(self):
            check_value(f.name, getattr(self, f.name), FIELD_RULES[f.name])
        if self.stage2_size <= self.stage1_size:
            raise UserError(f"--stage2_size: must be larger than --stage1_size "
                            f"({self.stage1_size}), got {self.stage2_size}")
        if self.recon_coef > 0 and self.stage1_size < 16:
            raise UserError(f"--recon_coef: D's decoders read its 8x8 features, so "
                            f"--stage1_size must be at least 16, got {self.stage1_size}")
        for p in filter(None, (s.strip() for s in self.diffaug.split(","))):
            if p not in DIFFAUG_POLICIES:
                raise UserError(f"--diffaug: unknown policy {_shown(p)} (use "
                                + ", ".join(DIFFAUG_POLICIES) + ")")
        if set(self.parsing_labels) < set(KINDS):
            raise UserError("parsing_labels needs a label for every kind: " + ", ".join(KINDS))
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def read_only_dir(path: Path) -> bool:
    """True for an existing folder that cannot take new files: not permitted, or marked
    read-only (no write bit for anyone; root's own permission checks ignore that mark)."""
    try:
        return path.is_dir() and not (os.access(path, os.W_OK) and path.stat().st_mode & 0o222)
    except OSError:
        return False


def side_cache_dir(data_dir: Path) -> Path:
    """Where the caches of a read-only data folder go:
    $XDG_CACHE_HOME (or ~/.cache)/fashion-stackgan/<folder name>-<hash of its path>."""
    data_dir = Path(data_dir).resolve()
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    tag = hashlib.sha256(str(data_dir).encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return home / "fashion-stackgan" / f"{data_dir.name}-{tag}"


# ------------------------------------------------------------------ value checks
#
# One place checks every value a user can give: the Config fields (from flags, presets
# or a checkpoint) and the own flags of every script. A Rule says what a value may be;
# `check_value` names the setting in the error; `flag_type` turns a rule into an
# argparse type, and `CliParser` prints argparse's complaints as one line, so a bad
# flag of any script reads `error: --lr_g: must be a finite number, got nan` (exit 2)
# before any work starts.

@dataclass(frozen=True)
class Rule:
    """What a setting accepts. kind: int, float, str or bool; lo/hi: bounds (hi_open:
    hi itself excluded); choices: the only values allowed; pow2: a power of two;
    optional: None is allowed too; test: a further check, value -> problem or None."""
    kind: type
    lo: Optional[float] = None
    hi: Optional[float] = None
    hi_open: bool = False
    choices: Optional[tuple] = None
    pow2: bool = False
    optional: bool = False
    test: Optional[Callable] = None

    def problem(self, value) -> Optional[str]:
        """What is wrong with `value` ("must be at least 1"), or None when it is fine."""
        if value is None:
            return None if self.optional else "must be given"
        if self.kind is bool:
            return None if isinstance(value, bool) else "must be y or n"
        if self.kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            return "must be a whole number"
        if self.kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return "must be a number"
            if not math.isfinite(value):
                return "must be a finite number"
        if self.kind is str and not isinstance(value, str):
            return "must be text"
        if self.kind is dict and not isinstance(value, dict):
            return "must be a mapping"
        if self.choices is not None and value not in self.choices:
            return "expected one of " + ", ".join(map(str, self.choices))
        if self.lo is not None or self.hi is not None:
            if self.pow2 and (value < 1 or value & (value - 1)):
                return "must be " + self.range_text()
            too_high = self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi)
            if (self.lo is not None and value < self.lo) or too_high:
                return "must be " + self.range_text()
        return self.test(value) if self.test else None

    def range_text(self) -> str:
        if self.pow2:
            return f"a power of two from {self.lo} to {self.hi}"
        if self.hi is None:
            return f"at least {self.lo}"
        if self.kind is float:
            return f"in [{self.lo}, {self.hi}{')' if self.hi_open else ']'}"
        return f"from {self.lo} to {self.hi}"

    def parse(self, text: str):
        """A command-line string as a value of this rule's kind (ValueError when it is not)."""
        if self.kind is bool:
            return yes_no(text)
        if self.kind is int:
            try:
                return int(text)
            except ValueError:
                raise ValueError("must be a whole number") from None
        if self.kind is float:
            try:
                return float(text)
            except ValueError:
                raise ValueError("must be a number") from None
        return text


def whole(lo: int = 0, hi: Optional[int] = None) -> Rule:
    return Rule(int, lo, hi)


def number(lo: float, hi: Optional[float] = None, hi_open: bool = False) -> Rule:
    return Rule(float, lo, hi, hi_open)


def one_of(*choices, optional: bool = False) -> Rule:
    return Rule(type(choices[0]), choices=choices, optional=optional)


def power_of_two(lo: int, hi: int) -> Rule:
    return Rule(int, lo, hi, pow2=True)


def _text_problem(value: str) -> Optional[str]:
    if not value.strip():
        return "must not be empty"
    if "\x00" in value:
        return "must not hold a NUL character"
    if len(value) > 4096:
        return "is longer than 4096 characters"
    return None


_DEVICE_RE = re.compile(r"auto|cpu|mps|cuda(:[0-9]{1,3})?")


def _device_problem(value: str) -> Optional[str]:
    return None if _DEVICE_RE.fullmatch(value) else "expected auto, cpu, cuda, cuda:N or mps"


def _wandb_project_problem(value: str) -> Optional[str]:
    if "\x00" in value:
        return "must not hold a NUL character"
    bad = [c for c in "/\\#?%:" if c in value]
    if bad or not value.strip() or len(value) > 128:
        return "must be 1 to 128 characters without / \\ # ? % :"
    return None


def _mapping_problem(values: Callable) -> Callable:
    def test(value: dict) -> Optional[str]:
        if not all(isinstance(k, str) for k in value) or not all(map(values, value.values())):
            return "holds an entry of the wrong kind"
        return None
    return test


TEXT = Rule(str, test=_text_problem)
PATH = Rule(str, optional=True, test=_text_problem)
DEVICE = Rule(str, test=_device_problem)
SEED = whole(0, 2 ** 32 - 1)
NUM_THREADS = whole(0, 1024)
DIFFAUG_POLICIES = ("color", "translation", "cutout")

# the range of every Config field (Config.validate checks that none is missing)
FIELD_RULES = {
    "data_dir": PATH, "builtin_dir": TEXT, "builtin_per_kind": whole(1, 100_000),
    "cache_dir": PATH, "embeddings_path": PATH,
    "category_map": Rule(dict, test=_mapping_problem(lambda v: v in KINDS)),
    "parsing_labels": Rule(dict, test=_mapping_problem(
        lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255)),
    "min_region_frac": number(0, 1, hi_open=True), "crop_margin": number(0, 10),
    "max_samples": whole(0), "wrong_same_kind": number(0, 1),
    "text_model": TEXT, "text_dim": whole(1, 16384),
    "stage": one_of(1, 2), "stage1_size": power_of_two(8, 1024),
    "stage2_size": power_of_two(16, 2048), "z_dim": whole(1, 4096),
    "condition_dim": whole(1, 4096), "gf_dim": whole(1, 1024), "df_dim": whole(1, 1024),
    "g_min_channels": whole(1, 1024), "g_supersample": one_of(1, 2, 4),
    "g_upsample": one_of(*UPSAMPLES),
    "r_num": whole(0, 64), "g_fusion": one_of(*FUSIONS),
    "d_cond": one_of("text", "mu"),
    "batch_size": whole(2, 65536), "epochs": whole(1, 1_000_000),
    "lr_g": number(0), "lr_d": number(0),  # finite; a divergent run stops by itself
    "beta1": number(0, 1, hi_open=True), "beta2": number(0, 1, hi_open=True),
    "lr_decay_epoch": whole(1), "kl_coef": number(0, 1e6),
    "ms_coef": number(0, 1e6), "aux_coef": number(0, 1e6),
    "ema_decay": number(0, 1, hi_open=True), "loss": one_of("bce", "hinge"),
    "d_norm": one_of("bn", "sn"), "diffaug": Rule(str), "aug_p": number(0, 1),
    "ada_target": number(0, 1, hi_open=True), "ada_kimg": number(0.001, 1e6),
    "recon_coef": number(0, 1e6), "ma_gp": number(0, 1e6), "r1_gamma": number(0, 1e6),
    "reg_every": whole(1, 1_000_000),
    "sr_coef": number(0, 1e6),
    "s2_output": one_of("redraw", "residual"), "skip_excitation": Rule(bool),
    "draft_skip": Rule(bool),
    "max_steps": whole(0), "max_minutes": number(0, 1e7),
    "snapshot_interval": whole(1), "keep_checkpoints": whole(0, 100_000),
    "log_interval": whole(1),
    "seed": SEED, "out_dir": TEXT, "device": DEVICE, "num_threads": NUM_THREADS,
    "amp": one_of("auto", "on", "off"), "channels_last": Rule(bool), "tf32": Rule(bool),
    "compile": Rule(bool), "wandb_project": Rule(str, test=_wandb_project_problem),
    "wandb_mode": one_of("online", "offline", "disabled", optional=True),
    "n_samples": whole(1, 1000),
}


def _shown(value) -> str:
    """A value as an error message shows it: on one line, at most 60 characters; text
    in quotes unless it is one plain word."""
    plain = isinstance(value, str) and value.isprintable() and value and not value.split()[1:] \
        and value.strip() == value and value.isascii()
    text = value if plain else repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_value(name: str, value, rule: Rule) -> None:
    """Raise a UserError `--name: <problem>, got <value>` when `value` breaks `rule`."""
    problem = rule.problem(value)
    if problem:
        raise UserError(f"--{name}: {problem}, got {_shown(value)}")


def yes_no(v: str) -> bool:
    v = v.strip().lower()
    if v in ("y", "yes", "true", "1"):
        return True
    if v in ("n", "no", "false", "0"):
        return False
    raise argparse.ArgumentTypeError("expected y or n")


def flag_type(rule: Rule) -> Callable:
    """An argparse `type` that reads a flag's string by `rule` and checks it."""
    def convert(text: str):
        try:
            value = rule.parse(text)
        except (ValueError, argparse.ArgumentTypeError) as e:
            raise argparse.ArgumentTypeError(f"{e}, got {_shown(text)}") from None
        problem = rule.problem(value)
        if problem:
            raise argparse.ArgumentTypeError(f"{problem}, got {_shown(text)}")
        return value
    convert.__name__ = rule.kind.__name__
    convert.rule = rule  # what the flag accepts, for help and tests
    return convert


class CliParser(argparse.ArgumentParser):
    """argparse whose complaints are UserErrors: under utils.run_cli they print as one
    line, `error: --flag: ...`, with exit code 2 like every other user error."""

    def error(self, message: str):
        message = re.sub(r"^argument ", "", " ".join(str(message).split()))
        # a long value quoted in argparse's message is cut short, as _shown does
        message = re.sub(r"""(['"])([^'"]{57})[^'"]{4,}\1""", r"\1\2...\1", message)
        raise UserError(message if len(message) <= 300 else message[:297] + "...")


def stage_list(text: str) -> list:
    """--stages: a comma-separated list of 1 and 2, or "" for none (bench.py)."""
    stages = [s.strip() for s in text.split(",") if s.strip()]
    if any(s not in ("1", "2") for s in stages):
        raise argparse.ArgumentTypeError(f"expected 1, 2, 1,2 or nothing, got {_shown(text)}")
    return [int(s) for s in stages]

# fields whose values change the shape of the networks (g_upsample: what they compute): a
# checkpoint only loads into a model built with the same values
ARCH_FIELDS = ("stage1_size", "stage2_size", "z_dim", "condition_dim", "gf_dim", "df_dim",
               "g_min_channels", "g_supersample", "g_upsample", "r_num", "text_dim", "d_norm",
               "g_fusion", "d_cond", "aux_coef", "recon_coef", "s2_output", "skip_excitation",
               "draft_skip")
