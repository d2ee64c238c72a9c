"""One typed config for data, models, training and generation.

Defaults follow StackGAN (Zhang et al., 2017): Stage-I 64x64, Stage-II 256x256,
z 100, condition 128, Adam(2e-4, betas 0.5/0.999), LR halved every 20 epochs,
KL coefficient 2.0. Additions are on by default where the evaluation supports them:
an EMA generator (ema_decay 0.999, warmed up) draws the samples, and the text reaches
the picture through D's own reading of the sentence (d_cond "text"), text-conditioned
BatchNorm in every G block (g_fusion "affine"), attribute heads in D (aux_coef 1) and
"wrong" pairs that differ in kind, colour or pattern. `--ema_decay 0 --d_cond mu
--g_fusion input --aux_coef 0 --wrong_same_kind 0` restores the original. Every
field can be set from the command line in main.py (`--name value`), so there is no YAML
and no second source of truth.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

KINDS = ("t-shirt", "dress", "pants", "leggings", "shoes")

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

# The colour vocabulary: common fashion colour names, each with reference sRGB shades
# (mid, dark, light). A garment's measured pixels are named by the nearest shade in
# CIELAB (datasets.name_colour); the first shade is the one the built-in data paints.
COLOURS = {
    "black": [(30, 30, 32), (12, 12, 14), (58, 58, 62)],
    "white": [(248, 248, 246), (222, 222, 218), (236, 236, 240)],
    "grey": [(132, 134, 140), (92, 94, 100), (176, 178, 182)],
    "red": [(200, 32, 42), (140, 18, 28), (228, 72, 72)],
    "pink": [(240, 150, 188), (210, 100, 150), (248, 196, 214)],
    "orange": [(240, 126, 30), (190, 90, 20), (250, 168, 90)],
    "yellow": [(242, 206, 40), (196, 160, 20), (250, 232, 130)],
    "green": [(34, 140, 64), (18, 88, 38), (120, 190, 120)],
    "blue": [(40, 100, 205), (28, 70, 150), (110, 160, 230)],
    "navy": [(26, 36, 88), (16, 22, 56), (44, 56, 110)],
    "purple": [(118, 56, 160), (80, 34, 110), (176, 136, 208)],
    "brown": [(118, 74, 40), (80, 50, 28), (160, 112, 70)],
    "beige": [(222, 201, 160), (196, 174, 130), (236, 222, 192)],
}
# other words a caption may use for a colour of the vocabulary
COLOUR_ALIASES = {"gray": "grey", "khaki": "beige", "cream": "beige", "tan": "beige",
                  "burgundy": "red", "maroon": "red", "violet": "purple", "lilac": "purple",
                  "gold": "yellow", "silver": "grey", "denim-blue": "blue"}
# The pattern vocabulary: DFMM's pattern classes (labels/texture/pattern_ann.txt codes 0-6,
# "other" read as dotted) in the words its captions use.
PATTERNS = ("floral", "graphic", "striped", "pure color", "lattice", "dotted", "color block")
PATTERN_ALIASES = {"solid color": "pure color", "solid": "pure color", "plain": "pure color",
                   "stripe": "striped", "stripes": "striped", "checked": "lattice",
                   "plaid": "lattice", "check": "lattice", "polka-dot": "dotted",
                   "polka dot": "dotted", "dots": "dotted", "colour block": "color block"}
# DFMM fabric classes (labels/texture/fabric_ann.txt codes 0-6)
FABRICS = ("denim", "cotton", "leather", "furry", "knitted", "chiffon", "other")

# Settings used when no --data_dir is given: the built-in synthetic garments are
# simple, so narrower networks learn them within minutes on a laptop CPU.
BUILTIN_PRESET = dict(gf_dim=32, df_dim=32, epochs=30, lr_decay_epoch=20, batch_size=32,
                      snapshot_interval=5)


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
    # "wrong" pairs differ from the real image in kind, colour or pattern; this share of them
    # is drawn from the real image's own kind (a dress of another colour or pattern)
    wrong_same_kind: float = 0.25
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
    df_dim: int = 64
    r_num: int = 2  # residual blocks in Stage-II G
    # text conditioning (the StackGAN originals: g_fusion "input", d_cond "mu")
    g_fusion: str = "affine"  # input: text joins the noise at 4x4 | affine: and sets every up block's BN
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
    # >0: D also names each real image's kind, colour and pattern (auxiliary heads) and G is
    # trained to make its images named as their caption's; 0: off, as StackGAN
    aux_coef: float = 1.0
    # >0: an exponential moving average of G's weights draws the samples and is saved as
    # netG_ema, with BatchNorm statistics recomputed for its own weights (0: off, as StackGAN)
    ema_decay: float = 0.999
    # small-data / stability switches (the defaults are StackGAN's original choices)
    loss: str = "bce"  # bce (StackGAN) | hinge
    d_norm: str = "bn"  # discriminator normalisation: bn (StackGAN) | sn (spectral norm, no BN)
    diffaug: str = ""  # differentiable augmentation of every D input, e.g. "color,translation,cutout"
    r1_gamma: float = 0.0  # >0: R1 gradient penalty on real images
    max_steps: int = 0  # >0: stop with a checkpoint after this many steps in all (0: run every epoch)
    snapshot_interval: int = 10  # epochs between checkpoints and sample grids
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
        return Path(self.cache_dir) if self.cache_dir else self.resolved_data_dir() / "cache"

    def resolved_embeddings_path(self) -> Path:
        if self.embeddings_path:
            return Path(self.embeddings_path)
        return self.resolved_data_dir() / "embeddings.pickle"

    def resolved_wandb_mode(self) -> str:
        if self.wandb_mode:
            return self.wandb_mode
        return "online" if os.environ.get("WANDB_API_KEY") else "offline"

    def validate(self) -> "Config":
        """Raise ValueError naming a setting whose value is not one of its choices."""
        choices = {"loss": ("bce", "hinge"), "d_norm": ("bn", "sn"), "amp": ("auto", "on", "off"),
                   "stage": (1, 2), "g_fusion": ("input", "affine"), "d_cond": ("text", "mu")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"--{name} {getattr(self, name)!r}: expected one of "
                                 + ", ".join(map(str, allowed)))
        for p in filter(None, (s.strip() for s in self.diffaug.split(","))):
            if p not in ("color", "translation", "cutout"):
                raise ValueError(f"--diffaug: unknown policy {p!r} (use color, translation, cutout)")
        for name in ("batch_size", "epochs", "lr_decay_epoch", "snapshot_interval", "log_interval",
                     "n_samples", "z_dim", "condition_dim", "gf_dim", "df_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if not self.aux_coef >= 0:
            raise ValueError(f"--aux_coef must be at least 0, got {self.aux_coef}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"--ema_decay must be in [0, 1), got {self.ema_decay}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# fields whose values change the shape of the networks: a checkpoint only loads
# into a model built with the same values
ARCH_FIELDS = ("stage1_size", "stage2_size", "z_dim", "condition_dim", "gf_dim", "df_dim",
               "r_num", "text_dim", "d_norm", "g_fusion", "d_cond", "aux_coef")
