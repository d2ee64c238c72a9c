"""StackGAN networks: conditioning augmentation, Stage-I and Stage-II G and D.

Stage I draws a coarse image of `stage1_size` from (text embedding, noise); with
g_fusion "affine_text" the sentence embedding also sets the BatchNorm scale and shift
of every upsampling block of both stages, as DF-GAN fuses text into each block ("affine":
the conditioning-augmentation sample c sets them, noise and all).
Stage II keeps a frozen Stage-I generator, encodes its image down to a quarter
of its size, joins the text condition, refines it with residual blocks and
upsamples to `stage2_size`. Both discriminators are matching-aware: they score
an image together with a text condition (with d_cond "text" their own projection of
the sentence embedding; with "mu", StackGAN's, the generator's CA mean); the
Stage-II one also gives an unconditional realism logit.

All widths and sizes come from config.Config, so a 16->64 model with a few
channels builds in milliseconds for the tests.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from captions import COLOURS, KINDS, PATTERNS
from config import FUSIONS, UPSAMPLES, Config


def _log2(n: int, what: str) -> int:
    k = int(round(math.log2(n)))
    if 2 ** k != n:
        raise ValueError(f"{what} must be a power of two, got {n}")
    return k


def conv3x3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, 1, 1, bias=False)


def upsample(mode: str) -> nn.Upsample:
    """x2: "nearest" (StackGAN) copies each pixel into a 2x2 square, which the next 3x3
    conv can turn into a grid of light and dark squares; "bilinear" interpolates."""
    if mode not in UPSAMPLES:
        raise ValueError(f"g_upsample must be one of {', '.join(UPSAMPLES)}, got {mode!r}")
    return (nn.Upsample(scale_factor=2, mode="nearest") if mode == "nearest" else
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))


def up_block(cin: int, cout: int, mode: str = "nearest") -> nn.Sequential:
    """x2 upsampling, 3x3 conv, BN, ReLU (StackGAN's upBlock, nearest)."""
    return nn.Sequential(upsample(mode), conv3x3(cin, cout), nn.BatchNorm2d(cout), nn.ReLU(True))


def d_conv(cin: int, cout: int, k: int, s: int, p: int, norm: str) -> nn.Module:
    """A discriminator conv: with spectral norm (and a bias) when norm == "sn"."""
    if norm == "sn":
        return nn.utils.parametrizations.spectral_norm(nn.Conv2d(cin, cout, k, s, p))
    return nn.Conv2d(cin, cout, k, s, p, bias=False)


def d_norm_layer(ch: int, norm: str) -> nn.Module:
    if norm not in ("bn", "sn"):
        raise ValueError(f"d_norm must be bn or sn, got {norm!r}")
    return nn.BatchNorm2d(ch) if norm == "bn" else nn.Identity()


def down_block(cin: int, cout: int, bn: bool = True, norm: str = "bn") -> nn.Sequential:
    """4x4 stride-2 conv, optional BN, LeakyReLU(0.2)."""
    layers = [d_conv(cin, cout, 4, 2, 1, norm)]
    if bn:
        layers.append(d_norm_layer(cout, norm))
    layers.append(nn.LeakyReLU(0.2, True))
    return nn.Sequential(*layers)


class CondUpBlock(nn.Module):
    """up_block whose BatchNorm scale and shift come from the text condition (the
    text-image fusion of DF-GAN's blocks): x2 upsampling, 3x3 conv, BN without its own
    affine, then (1 + gamma(c)) * x + beta(c), ReLU."""

    def __init__(self, cin: int, cout: int, c_dim: int, mode: str = "nearest"):
        super().__init__()
        self.conv = nn.Sequential(upsample(mode), conv3x3(cin, cout))
        self.bn = nn.BatchNorm2d(cout, affine=False)
        self.affine = nn.Linear(c_dim, cout * 2)

    def forward(self, x, c):
        gamma, beta = self.affine(c).chunk(2, dim=1)
        h = self.bn(self.conv(x))
        return F.relu(h * (1 + gamma[:, :, None, None]) + beta[:, :, None, None])


def fusion_dim(cfg: Config) -> int:
    """Width of what sets the up blocks' BN: the CA sample c, the sentence embedding, or
    the sentence embedding with the noise z (DF-GAN's blocks read both)."""
    return {"affine_text": cfg.text_dim, "affine_text_z": cfg.text_dim + cfg.z_dim}.get(
        cfg.g_fusion, cfg.condition_dim)


def block_cond(fusion: str, text_emb, z, c):
    """What the up blocks read (see fusion_dim)."""
    if fusion == "affine_text":
        return text_emb
    if fusion == "affine_text_z":
        return torch.cat([text_emb, z], 1)
    return c


def make_ups(chans, c_dim: int, fusion: str, mode: str = "nearest") -> nn.ModuleList:
    """The upsampling blocks of a generator: plain (StackGAN, fusion "input") or
    text-conditioned (any other fusion; `c_dim` is fusion_dim's); `mode`: upsample's."""
    if fusion not in FUSIONS:
        raise ValueError(f"g_fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")
    pairs = range(len(chans) - 1)
    if fusion != "input":
        return nn.ModuleList(CondUpBlock(chans[i], chans[i + 1], c_dim, mode) for i in pairs)
    return nn.ModuleList(up_block(chans[i], chans[i + 1], mode) for i in pairs)


def run_ups(ups: nn.ModuleList, h, c, se=None, small=None, add=None):
    """G's up blocks on h (a CondUpBlock also reads the condition c); `se`: skip-layer
    excitation gates by block index (str), each set from the feature map `small`;
    `add`: (block index, feature map) added to that block's output."""
    for i, block in enumerate(ups):
        h = block(h, c) if isinstance(block, CondUpBlock) else block(h)
        if se is not None and str(i) in se:
            h = se[str(i)](small, h)
        if add is not None and add[0] == i:
            h = h + add[1]
    return h


class ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(conv3x3(ch, ch), nn.BatchNorm2d(ch), nn.ReLU(True),
                                  conv3x3(ch, ch), nn.BatchNorm2d(ch))

    def forward(self, x):
        return F.relu(x + self.body(x))


class SEBlock(nn.Module):
    """Skip-layer excitation (FastGAN, Liu et al., 2021): a low-resolution feature map
    sets a per-channel gate in (0, 1) on a high-resolution one, so the layout it holds
    reaches the fine layers in one step."""

    def __init__(self, c_small: int, c_big: int):
        super().__init__()
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Conv2d(c_small, c_big, 4, 1, 0, bias=False),
                                  nn.SiLU(), nn.Conv2d(c_big, c_big, 1, 1, 0, bias=False), nn.Sigmoid())

    def forward(self, small, big):
        return big * self.gate(small)


def over_draft(draft, detail):
    """Stage II's "residual" output: `detail` (logits) added to the draft upscaled, as
    tanh(atanh(draft) + detail), so that zero detail gives back the draft itself."""
    return torch.tanh(torch.atanh(draft.clamp(-0.999, 0.999)) + detail)


class CA_NET(nn.Module):
    """Conditioning augmentation: text embedding -> N(mu, sigma^2) -> sampled condition.

    A plain linear map gives mu and log-variance; there is no ReLU in front of it,
    so mu can be negative and sigma below one.
    """

    def __init__(self, text_dim: int, c_dim: int):
        super().__init__()
        self.c_dim = c_dim
        self.fc = nn.Linear(text_dim, c_dim * 2)

    def encode(self, text_emb):
        mu, logvar = self.fc(text_emb).chunk(2, dim=1)
        return mu, logvar

    def forward(self, text_emb, eps=None):
        mu, logvar = self.encode(text_emb)
        if eps is None:
            eps = torch.randn_like(mu)
        c = mu + torch.exp(0.5 * logvar) * eps
        return c, mu, logvar


class Stage1_G(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.z_dim = cfg.z_dim
        ngf = cfg.gf_dim * 8
        self.supersample = cfg.g_supersample  # up blocks past stage1_size, then averaged down
        n_up = _log2(cfg.stage1_size * self.supersample, "stage1_size") - 2
        self.ca_net = CA_NET(cfg.text_dim, cfg.condition_dim)
        self.fc = nn.Sequential(nn.Linear(cfg.z_dim + cfg.condition_dim, ngf * 16, bias=False),
                                nn.BatchNorm1d(ngf * 16), nn.ReLU(True))
        chans = [ngf] + [max(ngf >> (i + 1), cfg.g_min_channels) for i in range(n_up)]
        self.ups = make_ups(chans, fusion_dim(cfg), cfg.g_fusion, cfg.g_upsample)
        self.fusion = cfg.g_fusion
        self.to_img = nn.Sequential(conv3x3(chans[-1], 3), nn.Tanh())
        self.ngf = ngf

    def forward(self, text_emb, z):
        c, mu, logvar = self.ca_net(text_emb)
        h = self.fc(torch.cat([z, c], 1)).view(-1, self.ngf, 4, 4)
        img = self.to_img(run_ups(self.ups, h, block_cond(self.fusion, text_emb, z, c)))
        if self.supersample > 1:
            img = F.avg_pool2d(img, self.supersample)
        return img, mu, logvar


class Stage2_G(nn.Module):
    """Refines the image of a frozen Stage-I generator to stage2_size."""

    def __init__(self, cfg: Config, stage1_g: Stage1_G):
        super().__init__()
        self.z_dim = cfg.z_dim
        self.stage1 = stage1_g
        for p in self.stage1.parameters():
            p.requires_grad_(False)
        ngf = cfg.gf_dim
        self.ca_net = CA_NET(cfg.text_dim, cfg.condition_dim)
        self.encoder = nn.Sequential(conv3x3(3, ngf), nn.ReLU(True),
                                     nn.Conv2d(ngf, ngf * 2, 4, 2, 1, bias=False),
                                     nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
                                     nn.Conv2d(ngf * 2, ngf * 4, 4, 2, 1, bias=False),
                                     nn.BatchNorm2d(ngf * 4), nn.ReLU(True))
        self.joint = nn.Sequential(conv3x3(ngf * 4 + cfg.condition_dim, ngf * 4),
                                   nn.BatchNorm2d(ngf * 4), nn.ReLU(True))
        self.residual = nn.Sequential(*[ResBlock(ngf * 4) for _ in range(cfg.r_num)])
        n_up = _log2(cfg.stage2_size, "stage2_size") - (_log2(cfg.stage1_size, "stage1_size") - 2)
        if n_up < 1:
            raise ValueError("stage2_size must be larger than stage1_size")
        chans = [ngf * 4] + [max((ngf * 4) >> (i + 1), 8) for i in range(n_up)]
        self.ups = make_ups(chans, fusion_dim(cfg), cfg.g_fusion, cfg.g_upsample)
        self.fusion = cfg.g_fusion
        # skip-layer excitation: the refined 16x16 (stage1_size / 4) features gate every up
        # block whose output is at least 4x their size
        self.se = nn.ModuleDict({str(i): SEBlock(ngf * 4, chans[i + 1]) for i in range(1, n_up)}
                                if cfg.skip_excitation else {})
        # draft skip: the encoder's first (full draft size) features, projected, join the
        # output of the up block that reaches stage1_size (index 1: two up from a quarter)
        self.draft_skip = (nn.Sequential(nn.Conv2d(ngf, chans[2], 1, bias=False),
                                         nn.BatchNorm2d(chans[2]), nn.ReLU(True))
                           if cfg.draft_skip else None)
        self.residual_out = cfg.s2_output == "residual"
        if self.residual_out:  # detail over the draft: starts at zero, i.e. at the draft
            self.to_img = conv3x3(chans[-1], 3)
        else:
            self.to_img = nn.Sequential(conv3x3(chans[-1], 3), nn.Tanh())
        self.size = cfg.stage2_size

    def train(self, mode: bool = True):
        super().train(mode)
        self.stage1.eval()  # frozen: keep its BatchNorm statistics fixed
        return self

    def forward(self, text_emb, z, return_stage1: bool = False, low=None):
        """Stage I's draft of (text_emb, z) refined; `low`: refine this stage1_size image
        instead (a real photo scaled down, for sr_coef's loss)."""
        if low is None:
            with torch.no_grad():
                low, _, _ = self.stage1(text_emb, z)
        c, mu, logvar = self.ca_net(text_emb)
        full = self.encoder[:2](low)  # conv3x3 + ReLU at the draft's own size
        h = self.encoder[2:](full)
        c_map = c[:, :, None, None].expand(-1, -1, h.size(2), h.size(3))
        h = small = self.residual(self.joint(torch.cat([h, c_map], 1)))
        add = (1, self.draft_skip(full)) if self.draft_skip is not None else None
        h = run_ups(self.ups, h, block_cond(self.fusion, text_emb, z, c), self.se, small, add)
        if self.residual_out:
            draft = F.interpolate(low.float(), size=self.size, mode="bicubic", align_corners=False)
            img = over_draft(draft, self.to_img(h).float())  # fp32: atanh near +-1
        else:
            img = self.to_img(h)
        if return_stage1:
            return img, mu, logvar, low
        return img, mu, logvar


class D_Logits(nn.Module):
    """Conditional (image, text) logit, and optionally an unconditional one."""

    def __init__(self, ch: int, c_dim: int, uncond: bool, norm: str = "bn"):
        super().__init__()
        self.joint = nn.Sequential(d_conv(ch + c_dim, ch, 3, 1, 1, norm), d_norm_layer(ch, norm),
                                   nn.LeakyReLU(0.2, True), d_conv(ch, 1, 4, 4, 0, norm))
        self.uncond = d_conv(ch, 1, 4, 4, 0, norm) if uncond else None

    def forward(self, feat, c):
        c_map = c[:, :, None, None].expand(-1, -1, feat.size(2), feat.size(3))
        cond = self.joint(torch.cat([feat, c_map], 1)).view(-1)
        uncond = self.uncond(feat).view(-1) if self.uncond is not None else None
        return cond, uncond


class Decoder(nn.Module):
    """FastGAN's SimpleDecoder: an 8x8 feature map -> an image of `size` px in [-1, 1]
    through up blocks that halve the channels."""

    def __init__(self, cin: int, size: int):
        super().__init__()
        n_up = _log2(size, "reconstruction size") - 3
        chans = [cin] + [max(cin >> (i + 1), 8) for i in range(n_up)]
        self.body = nn.Sequential(*[up_block(chans[i], chans[i + 1]) for i in range(n_up)],
                                  conv3x3(chans[-1], 3), nn.Tanh())

    def forward(self, feat):
        return self.body(feat)


RECON_MAX = 64  # the decoders rebuild at most 64 px (half the image size below that)


class _Discriminator(nn.Module):
    def __init__(self, cfg: Config, size: int, uncond: bool):
        super().__init__()
        ndf, norm = cfg.df_dim, cfg.d_norm
        n_down = _log2(size, "image size") - 2
        chans = [ndf * 2 ** i for i in range(n_down)]
        layers = [down_block(3, chans[0], bn=False, norm=norm)]
        layers += [down_block(chans[i], chans[i + 1], norm=norm) for i in range(n_down - 1)]
        ch = chans[-1]
        while ch > ndf * 8:  # Stage II: squeeze back to ndf*8 channels at 4x4
            layers += [d_conv(ch, ch // 2, 3, 1, 1, norm), d_norm_layer(ch // 2, norm),
                       nn.LeakyReLU(0.2, True)]
            ch //= 2
        self.encode = nn.Sequential(*layers)
        self.logits = D_Logits(ch, cfg.condition_dim, uncond, norm)
        if cfg.d_cond not in ("text", "mu"):
            raise ValueError(f"d_cond must be text or mu, got {cfg.d_cond!r}")
        # "text": D reads the sentence embedding through its own projection; "mu"
        # (StackGAN): D is handed the generator's conditioning-augmentation mean
        self.text_proj = (nn.Sequential(nn.Linear(cfg.text_dim, cfg.condition_dim),
                                        nn.LeakyReLU(0.2, True)) if cfg.d_cond == "text" else None)
        # aux_coef > 0: auxiliary heads that name the image's kind, colour and pattern
        # (an AC-GAN/TAC-GAN classifier on D's features), trained on real images
        self.aux = (nn.Linear(ch, len(KINDS) + len(COLOURS) + len(PATTERNS))
                    if cfg.aux_coef > 0 else None)
        # recon_coef > 0: decoders that rebuild a real image from D's 8x8 features (the
        # whole image) and from one quarter of its 16x16 features (that quarter)
        self.rec_size = min(size // 2, RECON_MAX)
        feat_ch = {size >> (i + 1): c for i, c in enumerate(chans)}  # side -> channels
        self.dec_whole = self.dec_part = None
        if cfg.recon_coef > 0:
            self.dec_whole = Decoder(feat_ch[8], self.rec_size)
            if 16 in feat_ch:
                self.dec_part = Decoder(feat_ch[16], self.rec_size)

    def forward(self, img, cond, recon: bool = False):
        """Returns (conditional logits, unconditional logits or None, attribute logits
        (kind, colour, pattern) or None), one row per image. cond: the sentence
        embedding (d_cond "text") or G's CA mean (d_cond "mu"). recon=True (a D built
        with recon_coef > 0, real images): a fourth entry, the L1 reconstruction loss."""
        c = self.text_proj(cond) if self.text_proj is not None else cond
        taps = {}
        if recon:
            feat = img
            for layer in self.encode:
                feat = layer(feat)
                taps.setdefault(feat.shape[-1], feat)
        else:
            feat = self.encode(img)
        cond_logit, uncond_logit = self.logits(feat, c)
        attrs = None
        if self.aux is not None:
            attrs = split_attributes(self.aux(feat.float().mean((2, 3)).to(feat.dtype)))
        if recon:
            return cond_logit, uncond_logit, attrs, self.reconstruction_loss(img, taps)
        return cond_logit, uncond_logit, attrs

    def reconstruction_loss(self, img, taps: dict):
        """Mean L1 between the images (area-downscaled to rec_size) and the decoders'
        rebuilds: the whole image from the 8x8 features, plus one random quarter (the
        same for the batch) from that quarter of the 16x16 features."""
        if self.dec_whole is None:
            raise ValueError("this discriminator was built without decoders (recon_coef 0)")
        target = F.adaptive_avg_pool2d(img.float(), self.rec_size)
        loss = (self.dec_whole(taps[8]).float() - target).abs().mean()
        if self.dec_part is not None:
            row, col = divmod(int(torch.randint(4, (1,))), 2)  # a CPU draw: no device wait
            half = img.shape[-1] // 2
            part = img[:, :, row * half:(row + 1) * half, col * half:(col + 1) * half]
            feat = taps[16][:, :, row * 8:(row + 1) * 8, col * 8:(col + 1) * 8]
            target = F.adaptive_avg_pool2d(part.float(), self.rec_size)
            loss = loss + (self.dec_part(feat).float() - target).abs().mean()
        return loss


def split_attributes(logits):
    """(B, K + C + P) attribute logits -> (kind, colour, pattern) logits."""
    return logits.split([len(KINDS), len(COLOURS), len(PATTERNS)], dim=1)


class Stage1_D(_Discriminator):
    def __init__(self, cfg: Config):
        super().__init__(cfg, cfg.stage1_size, uncond=False)


class Stage2_D(_Discriminator):
    def __init__(self, cfg: Config):
        super().__init__(cfg, cfg.stage2_size, uncond=True)


def weights_init(m: nn.Module):
    """StackGAN init: N(0, 0.02) convs and linears, N(1, 0.02) norm scales."""
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        if nn.utils.parametrize.is_parametrized(m, "weight"):  # spectral norm
            nn.init.normal_(m.parametrizations.weight.original, 0.0, 0.02)
        else:
            nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and m.affine:
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def build_models(cfg: Config, stage1_g: Stage1_G | None = None):
    """(G, D) for cfg.stage, freshly initialised. Stage II needs the trained Stage-I G."""
    if cfg.stage == 1:
        g, d = Stage1_G(cfg), Stage1_D(cfg)
        g.apply(weights_init)
    else:
        if stage1_g is None:
            raise ValueError("Stage II needs a trained Stage-I generator")
        g, d = Stage2_G(cfg, stage1_g), Stage2_D(cfg)
        for name, mod in g.named_children():
            if name != "stage1":
                mod.apply(weights_init)
        if g.residual_out:  # no detail yet: a new Stage II draws its drafts upscaled
            nn.init.zeros_(g.to_img.weight)
    d.apply(weights_init)
    return g, d
