"""Score a trained generator against held-out real garments, offline.

    python evaluate.py --net_g output/stage1/last.pt                   # built-in data
    python evaluate.py --net_g output/stage2/last.pt --data_dir DFMM --n_per_kind 100

Textbook FID needs Inception weights, which this repo cannot download. Instead the
repo trains its own judge, the *garment feature net*: a small CNN fitted once per
dataset on the real TRAINING images at 64 px to predict each image's garment kind
(config.KINDS) and colour (the first colour word of its caption, `parse_colour`). It
never sees generated images and knows nothing about the generator, so it scores every
generator the same way. Its accuracy on the held-out real images is printed and
written with the results, so its verdicts can be weighed.

Held-out set: the rows of labels.csv whose split is "validation" (the training loop
never sees them). A dataset without such rows (the real DFMM has no split) gets a
fixed 10% of each kind held out here, and the feature net trains on the rest; the
generator was then trained on those images too, which the run prints.

Metrics, each for the generated images and, as the reference, for real images:

* kind accuracy: for every kind with held-out images, `n_per_kind` of its held-out
  captions (shuffled by --seed, cycled when there are fewer) are drawn once each; the
  share of images the feature net classifies as the asked kind, per kind and overall.
  Real row: the held-out photos themselves (each once).
* colour accuracy: likewise for the caption's colour, over captions that name one.
* FD-garment: the Frechet distance between Gaussians fitted to feature-net features
  (the pooled 8*width-d layer before the heads) of the generated images and of the
  held-out real images of the same captions (`frechet_distance`). It is NOT FID: the
  features come from this small net, so values are comparable only between runs on
  the same dataset (same cached feature net). The floor is the same distance for as
  many real TRAINING images per kind, i.e. what a generator that reproduced the
  training photos would score; it is a slightly high floor since the feature net was
  fitted on those images.
* R-precision@K analogue: see `r_precision`.

Outputs under OUT_DIR/eval/: results.csv, a tidy table with the columns
`metric,set,kind,value,n` (metric: kind_accuracy | colour_accuracy | fd_garment |
r_precision; set: real_heldout | generated | real_train (the FD floor); kind: a kind
or "all"; n: images behind the value), and generated.png (up to 20 of the evaluated
images per kind, one row per kind). The metrics also go to WandB (job type "eval")
unless --wandb disabled. The feature net is cached as
CACHE_DIR/featnet_<key>.pt, key = hash of its training captions, kinds, images and
settings, so it is trained once per dataset.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from config import KINDS, Config
from utils import (UserError, _atomic_write, check_writable_dir, init_wandb, resolve_device,
                   run_cli, save_grid)

FEATNET_VERSION = "garment-featnet-v1"
FEAT_SIZE = 64  # the feature net works on 64 px images
FEAT_EPOCHS = 12
FEAT_WIDTH = 16  # channels of the first block; the feature is 8 * width wide
FEAT_SEED = 0  # the feature net belongs to the dataset, not to an evaluation's --seed
HOLDOUT_FRACTION = 0.1
GRID_COLUMNS = 20

# Colour vocabulary of the colour head; "gray" is read as "grey".
COLOURS = ("black", "white", "grey", "red", "pink", "orange", "yellow", "green", "blue", "navy",
           "purple", "brown", "beige")
COLOUR_ALIASES = {"gray": "grey"}
_COLOUR_RE = re.compile(r"\b(" + "|".join(COLOURS + tuple(COLOUR_ALIASES)) + r")\b", re.I)
IGNORE = -100  # colour target of a caption without a colour word


def parse_colour(caption: str):
    """The first colour word of the caption (from COLOURS, 'gray' -> 'grey'), or None.

    Only the first one counts: DFMM and the built-in data name the garment's colour
    first ("The pants are navy ..."), and a caption like "blue and white striped"
    is taken as blue. Words merely containing a colour ("reddish") do not count."""
    m = _COLOUR_RE.search(caption)
    if not m:
        return None
    word = m.group(1).lower()
    return COLOUR_ALIASES.get(word, word)


def colour_index(caption: str) -> int:
    c = parse_colour(caption)
    return COLOURS.index(c) if c is not None else IGNORE


# ---------------------------------------------------------------------------- metrics

def _mean_cov(feats) -> tuple[np.ndarray, np.ndarray]:
    x = (feats.detach().cpu().numpy() if isinstance(feats, torch.Tensor) else np.asarray(feats))
    x = x.astype(np.float64).reshape(len(x), -1)
    if len(x) == 0:
        raise ValueError("frechet_distance needs at least one feature vector per set")
    mu = x.mean(0)
    cov = np.cov(x, rowvar=False, ddof=1) if len(x) > 1 else np.zeros((x.shape[1],) * 2)
    return mu, np.atleast_2d(cov)


def _psd_sqrt(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(feats_a, feats_b) -> float:
    """Frechet distance between Gaussians fitted to two sets of vectors (N, D).

    |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2), in float64, the
    square roots taken as symmetric PSD roots by eigendecomposition (negative
    eigenvalues from round-off clipped to 0). Covariances are unbiased (N - 1)."""
    mu_a, s_a = _mean_cov(feats_a)
    mu_b, s_b = _mean_cov(feats_b)
    if mu_a.shape != mu_b.shape:
        raise ValueError(f"feature sizes differ: {mu_a.shape[0]} vs {mu_b.shape[0]}")
    root_a = _psd_sqrt(s_a)
    mid = root_a @ s_b @ root_a
    tr_mid = np.sqrt(np.clip(np.linalg.eigvalsh((mid + mid.T) / 2), 0, None)).sum()
    d = float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * tr_mid)
    return max(d, 0.0)


def r_precision(kind_logp, colour_logp, own_kind, own_colour, pool_kind, pool_colour,
                k: int = 10, seed: int = 0) -> tuple[float, float]:
    """Text-image agreement: an R-precision@K analogue scored by the feature net.

    For image i with caption attributes (own_kind[i], own_colour[i]) (colour -1: the
    caption names none), K-1 distractor captions are drawn without replacement from
    the pool (the held-out captions' attributes) among those that differ from the
    own caption in kind or colour; a distractor must name a colour when the own caption
    does, and must differ in kind when it does not, so all candidates of one image
    are scored on the same terms. Each candidate caption is scored by
    log p(its kind | image) + log p(its colour | image) (the colour term only when
    the own caption has a colour). An image is a hit when its own caption scores
    strictly highest; ties count as misses, so a classifier that cannot tell the
    candidates apart scores 0, not 1/K. When fewer than K-1 distractors qualify, all
    of them are used; an image with none is left out.

    Why this scorer: the captions of this data vary in exactly these two attributes
    (kind and colour), and the scorer is a classifier trained on real photos for
    precisely them, independent of the generator and of the text encoder the
    generator conditions on. So a hit means the image shows the garment and colour its
    caption asks for more clearly than those of other captions.

    kind_logp (N, n_kinds), colour_logp (N, n_colours): log-probabilities per image.
    Returns (hit rate, mean number of candidates per image incl. the own caption);
    the hit rate is NaN when no image had a distractor."""
    kind_logp = torch.as_tensor(kind_logp, dtype=torch.float64)
    colour_logp = torch.as_tensor(colour_logp, dtype=torch.float64)
    own_kind, own_colour = np.asarray(own_kind), np.asarray(own_colour)
    pool_kind, pool_colour = np.asarray(pool_kind), np.asarray(pool_colour)
    rng = np.random.default_rng(seed)
    eligible_cache: dict = {}
    hits, counted, cands = 0, 0, 0
    for i in range(len(own_kind)):
        key = (int(own_kind[i]), int(own_colour[i]))
        if key not in eligible_cache:
            if key[1] >= 0:
                ok = (pool_colour >= 0) & ((pool_kind != key[0]) | (pool_colour != key[1]))
            else:
                ok = pool_kind != key[0]
            eligible_cache[key] = np.flatnonzero(ok)
        elig = eligible_cache[key]
        if len(elig) == 0:
            continue
        pick = rng.choice(elig, size=min(k - 1, len(elig)), replace=False)
        kinds = np.concatenate([[key[0]], pool_kind[pick]])
        score = kind_logp[i, torch.as_tensor(kinds)]
        if key[1] >= 0:
            cols = np.concatenate([[key[1]], pool_colour[pick]])
            score = score + colour_logp[i, torch.as_tensor(cols)]
        hits += int(score[0] > score[1:].max())
        counted += 1
        cands += len(kinds)
    if counted == 0:
        return float("nan"), 0.0
    return hits / counted, cands / counted


# -------------------------------------------------------------------------- feature net

class GarmentFeatureNet(nn.Module):
    """64 px image in [-1, 1] -> (feature, kind logits, colour logits).

    Four conv/BN/ReLU blocks with 2x max-pooling (64 -> 4 px, width..8*width
    channels), one more conv block at 4x4, global average pooling to the 8*width-d
    feature, and two linear heads."""

    def __init__(self, width: int = FEAT_WIDTH, n_kinds: int = len(KINDS),
                 n_colours: int = len(COLOURS)):
        super().__init__()
        chans = [3, width, width * 2, width * 4, width * 8]
        layers = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
                       nn.ReLU(True), nn.MaxPool2d(2)]
        layers += [nn.Conv2d(chans[-1], chans[-1], 3, 1, 1, bias=False),
                   nn.BatchNorm2d(chans[-1]), nn.ReLU(True), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.kind_head = nn.Linear(chans[-1], n_kinds)
        self.colour_head = nn.Linear(chans[-1], n_colours)
        self.feat_dim = chans[-1]

    def forward(self, x):
        f = self.body(x)
        return f, self.kind_head(f), self.colour_head(f)


def to_feat_size(images: torch.Tensor) -> torch.Tensor:
    """Images of any square size -> FEAT_SIZE, by area resampling."""
    if images.shape[-1] == FEAT_SIZE and images.shape[-2] == FEAT_SIZE:
        return images
    return F.interpolate(images, size=(FEAT_SIZE, FEAT_SIZE), mode="area")


@torch.no_grad()
def featurize(net: GarmentFeatureNet, images, device, batch: int = 256, desc: str | None = None,
              progress: bool = True):
    """(features (N, D), kind log-probs (N, K), colour log-probs (N, C)) on the CPU.

    `images`: a (N, 3, S, S) tensor in [-1, 1], or a callable idx -> such a batch
    together with N as (callable, N)."""
    net.eval()
    if isinstance(images, tuple):
        get, n = images
    else:
        get, n = (lambda idx: images[idx]), len(images)
    feats, kl, cl = [], [], []
    starts = range(0, n, batch)
    for s in tqdm(starts, desc=desc, unit="batch", disable=not progress or len(starts) < 2):
        x = to_feat_size(get(np.arange(s, min(s + batch, n))).float()).to(device)
        f, k, c = net(x)
        feats.append(f.float().cpu())
        kl.append(F.log_softmax(k.float(), 1).cpu())
        cl.append(F.log_softmax(c.float(), 1).cpu())
    if not feats:
        return torch.zeros(0, net.feat_dim), torch.zeros(0, len(KINDS)), torch.zeros(0, len(COLOURS))
    return torch.cat(feats), torch.cat(kl), torch.cat(cl)


def _accuracy(logp: torch.Tensor, target) -> tuple[float, int]:
    target = torch.as_tensor(np.asarray(target), dtype=torch.long)
    ok = target >= 0
    n = int(ok.sum())
    if n == 0:
        return float("nan"), 0
    return float((logp.argmax(1)[ok] == target[ok]).double().mean()), n


def featnet_key(data, train_idx, index_key: str, width: int, epochs: int) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([FEATNET_VERSION, index_key, width, epochs, FEAT_SEED, FEAT_SIZE,
                         len(train_idx), list(COLOURS), list(KINDS)]).encode())
    for i in train_idx:
        h.update(f"{data.kinds[i]}|{data.captions[i]}\n".encode())
    return h.hexdigest()[:16]


def train_feature_net(data, train_idx, device, epochs: int = FEAT_EPOCHS, width: int = FEAT_WIDTH,
                      batch_size: int = 64, lr: float = 2e-3, progress: bool = True):
    """Fit a GarmentFeatureNet on the real images `train_idx` of `data` (a FashionData
    at 64 px): kind and caption-colour cross-entropy, Adam with a linearly decaying
    LR, random flips and small shifts. Deterministic for a given input (FEAT_SEED)."""
    from datasets import augment
    train_idx = np.asarray(train_idx)
    kind_t = torch.tensor([KINDS.index(data.kinds[i]) for i in train_idx])
    colour_t = torch.tensor([colour_index(data.captions[i]) for i in train_idx])
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(FEAT_SEED)
        gen = torch.Generator().manual_seed(FEAT_SEED)
        net = GarmentFeatureNet(width).to(device).train()
        opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-4)
        bs = max(2, min(batch_size, len(train_idx)))  # BatchNorm needs 2 per batch
        steps = max(1, len(train_idx) // bs) * epochs
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.02, 1 - s / steps))
        for epoch in range(epochs):
            perm = torch.randperm(len(train_idx), generator=gen)
            batches = [perm[s:s + bs] for s in range(0, len(perm) - bs + 1, bs)]
            bar = tqdm(batches, desc=f"feature net epoch {epoch + 1}/{epochs}", unit="batch",
                       disable=not progress)
            for b in bar:
                x = augment(data.pixels(train_idx[b.numpy()]), gen, max_shift=0.04, max_zoom=0.05)
                _, kl, cl = net(to_feat_size(x).to(device))
                loss = F.cross_entropy(kl, kind_t[b].to(device))
                ct = colour_t[b].to(device)
                if (ct >= 0).any():
                    loss = loss + F.cross_entropy(cl, ct, ignore_index=IGNORE)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                bar.set_postfix(loss=f"{loss.item():.3f}")
    return net.eval()


def load_or_train_feature_net(cfg: Config, data, train_idx, heldout_idx, index_key: str, device,
                              epochs: int = FEAT_EPOCHS, width: int = FEAT_WIDTH,
                              progress: bool = True):
    """The cached feature net for these training images, trained and cached when
    missing. Returns (net, info) with info = {path, trained, seconds, kind_acc,
    colour_acc, n_heldout, n_train}."""
    key = featnet_key(data, train_idx, index_key, width, epochs)
    path = cfg.resolved_cache_dir() / f"featnet_{key}.pt"
    if path.is_file():
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if obj.get("version") == FEATNET_VERSION and obj.get("key") == key \
                    and list(obj.get("colours", ())) == list(COLOURS):
                net = GarmentFeatureNet(int(obj["width"]))
                net.load_state_dict(obj["state_dict"])
                return net.to(device).eval(), {**obj["info"], "path": str(path), "trained": False,
                                               "seconds": 0.0}
        except Exception as e:  # unreadable or foreign file: train again
            print(f"feature net cache {path} unusable ({str(e).splitlines()[0]}); retraining")
    print(f"training the garment feature net on {len(train_idx)} real training images "
          f"({epochs} epochs)")
    t0 = time.time()
    net = train_feature_net(data, train_idx, device, epochs=epochs, width=width, progress=progress)
    seconds = time.time() - t0
    _, kl, cl = featurize(net, (lambda idx: data.pixels(heldout_idx[idx]), len(heldout_idx)),
                          device, progress=False)
    kind_acc, n_k = _accuracy(kl, [KINDS.index(data.kinds[i]) for i in heldout_idx])
    colour_acc, n_c = _accuracy(cl, [colour_index(data.captions[i]) for i in heldout_idx])
    info = {"kind_acc": kind_acc, "colour_acc": colour_acc, "n_heldout": len(heldout_idx),
            "n_heldout_colour": n_c, "n_train": len(train_idx), "train_seconds": seconds}
    obj = {"version": FEATNET_VERSION, "key": key, "width": width, "epochs": epochs,
           "colours": list(COLOURS), "kinds": list(KINDS),
           "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()}, "info": info}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, lambda f: torch.save(obj, f))
    except OSError as e:
        print(f"could not cache the feature net in {path.parent} ({e.strerror or e}); "
              "it will be trained again next time (set --cache_dir to a writable folder)")
    return net, {**info, "path": str(path), "trained": True, "seconds": seconds}


# ------------------------------------------------------------------------------ data

def split_heldout(data, splits) -> tuple[np.ndarray, np.ndarray, bool]:
    """(feature-net training indices, held-out indices, whether the hold-out was made
    here). Held out: split == "validation"; without such rows, a fixed 10% of each
    kind (kinds with a single image stay in training)."""
    splits = np.asarray(splits)
    val = splits == "validation"
    if val.any():
        return np.flatnonzero(~val), np.flatnonzero(val), False
    kinds = np.asarray(data.kinds)
    rng = np.random.default_rng(12345)
    held = []
    for kind in KINDS:
        idx = np.flatnonzero(kinds == kind)
        if len(idx) >= 2:
            held.append(rng.permutation(idx)[:max(1, int(round(HOLDOUT_FRACTION * len(idx))))])
    held = np.sort(np.concatenate(held)) if held else np.zeros(0, int)
    train = np.setdiff1d(np.arange(len(kinds)), held)
    return train, held, True


def _cycle(idx: np.ndarray, n: int) -> np.ndarray:
    return idx[np.arange(n) % len(idx)]


def _load_eval_data(cfg: Config, progress: bool):
    from datasets import load_data, prepare
    if cfg.data_dir is None:
        from synthetic import ensure_synthetic
        print(f"no --data_dir: evaluating on the built-in synthetic garments in {cfg.builtin_dir}")
        ensure_synthetic(cfg.builtin_dir, n_per_kind=cfg.builtin_per_kind, seed=0)
    data = load_data(cfg, FEAT_SIZE, split=None, progress=progress)
    index = prepare(cfg, FEAT_SIZE, progress=False)  # a cache hit: the split of every row
    splits = [index["splits"][r] for r in data.rows]
    return data, splits, index["key"]


# ------------------------------------------------------------------------------ main

def evaluate(net_g_path, cfg: Config, n_per_kind: int = 100, k: int = 10,
             feat_epochs: int = FEAT_EPOCHS, feat_width: int = FEAT_WIDTH,
             progress: bool = True) -> dict:
    """Evaluate the generator checkpoint `net_g_path` on cfg's dataset.

    cfg supplies the data (data_dir, builtin_dir, cache_dir, embeddings_path), seed,
    device, out_dir and wandb_mode; the generator's sizes come from its checkpoint.
    Returns the metrics (see the module docstring) and writes OUT_DIR/eval/."""
    import main as main_mod
    if n_per_kind < 1:
        raise UserError(f"--n_per_kind must be at least 1, got {n_per_kind}")
    if k < 2:
        raise UserError(f"--k must be at least 2 (the own caption and one distractor), got {k}")
    if feat_epochs < 1:
        raise UserError(f"--feat_epochs must be at least 1, got {feat_epochs}")
    device = resolve_device(cfg.device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    netG, gcfg, _ = main_mod.load_generator(net_g_path, device)
    out = check_writable_dir(Path(cfg.out_dir) / "eval")
    cfg = dataclasses.replace(cfg, text_model=gcfg.text_model, text_dim=gcfg.text_dim)
    if gcfg.resolved_data_dir().resolve() != cfg.resolved_data_dir().resolve():
        print(f"note: {net_g_path} was trained on {gcfg.resolved_data_dir()}, "
              f"evaluating on {cfg.resolved_data_dir()}")

    data, splits, index_key = _load_eval_data(cfg, progress)
    train_idx, held_idx, self_made = split_heldout(data, splits)
    if len(held_idx) == 0:
        raise UserError(f"no held-out images in {cfg.resolved_data_dir()}: a labels.csv split "
                        "'validation' is needed, or at least two images of a kind")
    if len(train_idx) == 0:
        raise UserError(f"no training images left in {cfg.resolved_data_dir()} to fit the "
                        "feature net on")
    if self_made:
        print(f"the dataset has no validation split: {len(held_idx)} images (10% of each kind) "
              "are held out from the feature net; the generator may have trained on them")
    if data.emb.shape[1] != gcfg.text_dim:
        raise UserError(f"caption embeddings have {data.emb.shape[1]} dims, {net_g_path} "
                        f"expects {gcfg.text_dim}")

    net, finfo = load_or_train_feature_net(cfg, data, train_idx, held_idx, index_key, device,
                                           epochs=feat_epochs, width=feat_width,
                                           progress=progress)
    how = f"trained in {finfo['seconds']:.0f}s" if finfo["trained"] else "cached"
    print(f"garment feature net ({how}, {finfo['path']}): "
          f"held-out kind accuracy {finfo['kind_acc']:.3f} (n={finfo['n_heldout']}), colour "
          f"accuracy {finfo['colour_acc']:.3f} (n={finfo['n_heldout_colour']})")

    kinds_all = np.array([KINDS.index(c) for c in data.kinds])
    colours_all = np.array([colour_index(c) for c in data.captions])

    # real held-out images, each once
    r_feat, r_kl, r_cl = featurize(net, (lambda idx: data.pixels(held_idx[idx]), len(held_idx)),
                                   device, desc="features: held-out", progress=progress)
    r_kind, r_col = kinds_all[held_idx], colours_all[held_idx]

    # captions to draw: n_per_kind per held-out kind, shuffled by the seed, cycled
    rng = np.random.default_rng(cfg.seed)
    present = [kd for kd in range(len(KINDS)) if (r_kind == kd).any()]
    sel, floor_sel = [], []
    for kd in present:
        sel.append(_cycle(rng.permutation(held_idx[r_kind == kd]), n_per_kind))
        tr = train_idx[kinds_all[train_idx] == kd]
        if len(tr):
            floor_sel.append(_cycle(rng.permutation(tr), n_per_kind))
    sel = np.concatenate(sel)
    floor_sel = np.concatenate(floor_sel)
    g_kind, g_col = kinds_all[sel], colours_all[sel]

    print(f"generating {len(sel)} images ({n_per_kind} per kind, {len(present)} kinds) "
          f"with {net_g_path}")
    # one kind at a time, kept at 64 px (plus the grid's images at full size) so that
    # memory stays bounded by n_per_kind for 256 px Stage-II images
    images, shown = [], []
    cols = min(n_per_kind, GRID_COLUMNS)
    for j, kd in enumerate(tqdm(present, desc="generating", unit="kind", disable=not progress)):
        part = sel[j * n_per_kind:(j + 1) * n_per_kind]
        img = main_mod.sample_images(netG, data.emb[torch.as_tensor(part)].to(device), 1,
                                     cfg.seed * 1000 + kd)
        shown.append(img[:cols])
        images.append(to_feat_size(img))
    images = torch.cat(images)
    g_feat, g_kl, g_cl = featurize(net, images, device, desc="features: generated",
                                   progress=progress)
    ref_feat = r_feat[torch.as_tensor(np.searchsorted(held_idx, sel))]  # real images of `sel`
    t_feat, _, _ = featurize(net, (lambda idx: data.pixels(floor_sel[idx]), len(floor_sel)),
                             device, desc="features: train (floor)", progress=progress)

    kind_real, n_real = _accuracy(r_kl, r_kind)
    kind_gen, n_gen = _accuracy(g_kl, g_kind)
    col_real, n_col_real = _accuracy(r_cl, r_col)
    col_gen, n_col_gen = _accuracy(g_cl, g_col)
    fd_gen = frechet_distance(g_feat, ref_feat)
    fd_floor = frechet_distance(t_feat, ref_feat)
    rp_real, k_real = r_precision(r_kl, r_cl, r_kind, r_col, r_kind, r_col, k, seed=cfg.seed)
    rp_gen, k_gen = r_precision(g_kl, g_cl, g_kind, g_col, r_kind, r_col, k, seed=cfg.seed)
    per_kind = {}
    for kd in present:
        acc_r, nr = _accuracy(r_kl[torch.as_tensor(r_kind == kd)], r_kind[r_kind == kd])
        acc_g, ng = _accuracy(g_kl[torch.as_tensor(g_kind == kd)], g_kind[g_kind == kd])
        per_kind[KINDS[kd]] = {"real": acc_r, "generated": acc_g, "n_real": nr, "n_generated": ng}

    metrics = {
        "kind_acc_real": kind_real, "kind_acc_generated": kind_gen,
        "colour_acc_real": col_real, "colour_acc_generated": col_gen,
        "fd_garment": fd_gen, "fd_garment_floor": fd_floor,
        "r_precision_real": rp_real, "r_precision_generated": rp_gen,
        "k": k, "candidates_real": k_real, "candidates_generated": k_gen,
        "n_heldout": len(held_idx), "n_generated": len(sel), "n_floor": len(floor_sel),
        "heldout_made_here": self_made, "per_kind": per_kind,
        "featnet": finfo, "net_g": str(net_g_path), "stage": gcfg.stage,
    }

    rows = [("kind_accuracy", "real_heldout", "all", kind_real, n_real),
            ("kind_accuracy", "generated", "all", kind_gen, n_gen)]
    for name, v in per_kind.items():
        rows += [("kind_accuracy", "real_heldout", name, v["real"], v["n_real"]),
                 ("kind_accuracy", "generated", name, v["generated"], v["n_generated"])]
    rows += [("colour_accuracy", "real_heldout", "all", col_real, n_col_real),
             ("colour_accuracy", "generated", "all", col_gen, n_col_gen),
             ("fd_garment", "generated", "all", fd_gen, len(sel)),
             ("fd_garment", "real_train", "all", fd_floor, len(floor_sel)),
             ("r_precision", "real_heldout", "all", rp_real, len(held_idx)),
             ("r_precision", "generated", "all", rp_gen, len(sel))]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["metric", "set", "kind", "value", "n"])
    w.writerows(rows)
    csv_path = out / "results.csv"
    _atomic_write(csv_path, lambda f: f.write(buf.getvalue().encode()))

    # grid: one row per kind, up to GRID_COLUMNS of its evaluated images
    grid = save_grid(torch.cat(shown), out / "generated.png", nrow=cols,
                     row_labels=[KINDS[kd] for kd in present])
    metrics["csv"], metrics["grid"] = str(csv_path), str(grid)

    print_table(metrics)
    print(f"wrote {csv_path} and {grid}")
    run = init_wandb(cfg, "eval", out)
    if run is not None:
        try:
            flat = {f"eval/{k_}": v for k_, v in metrics.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)}
            flat.update({f"eval/kind_acc_{kn}_{s}": v[s] for kn, v in per_kind.items()
                         for s in ("real", "generated")})
            flat.update({"eval/featnet_kind_acc": finfo["kind_acc"],
                         "eval/featnet_colour_acc": finfo["colour_acc"]})
            try:
                import wandb
                flat["eval/generated"] = wandb.Image(str(grid))
            except Exception:
                pass
            run.log(flat)
        finally:
            run.finish()
    return metrics


def _fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "-"
    return f"{v:.{digits}f}"


def print_table(m: dict):
    k = m["k"]
    head = f"{'':15}{'kind acc':>10}{'colour acc':>12}{'FD-garment':>12}{'floor':>9}{f'R-prec@{k}':>11}"
    print(head)
    print(f"{'real held-out':15}{_fmt(m['kind_acc_real']):>10}{_fmt(m['colour_acc_real']):>12}"
          f"{'-':>12}{_fmt(m['fd_garment_floor'], 2):>9}{_fmt(m['r_precision_real']):>11}")
    print(f"{'generated':15}{_fmt(m['kind_acc_generated']):>10}{_fmt(m['colour_acc_generated']):>12}"
          f"{_fmt(m['fd_garment'], 2):>12}{_fmt(m['fd_garment_floor'], 2):>9}"
          f"{_fmt(m['r_precision_generated']):>11}")
    print(f"\n{'kind':10}{'real':>8}{'generated':>11}{'n real':>8}{'n gen':>7}")
    for name, v in m["per_kind"].items():
        print(f"{name:10}{_fmt(v['real']):>8}{_fmt(v['generated']):>11}{v['n_real']:>8}"
              f"{v['n_generated']:>7}")
    print(f"(FD-garment: Frechet distance in the garment feature net's space, generated vs "
          f"held-out real; floor: real training images vs the same; R-precision: "
          f"{_fmt(m['candidates_generated'], 1)} candidates per generated image, ties count as misses)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Evaluate a generator checkpoint against held-out "
                                            "real garments with the repo's garment feature net.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--net_g", required=True, help="generator checkpoint (Stage I or II)")
    p.add_argument("--data_dir", default=None,
                   help="DFMM-layout folder; omitted: the built-in synthetic garments")
    p.add_argument("--n_per_kind", type=int, default=100, help="generated images per kind")
    p.add_argument("--k", type=int, default=10, help="candidate captions per image for R-precision")
    p.add_argument("--out_dir", default="output", help="results go to OUT_DIR/eval/")
    p.add_argument("--cache_dir", default=None, help="image and feature-net cache "
                                                     "(default: DATA_DIR/cache)")
    p.add_argument("--embeddings_path", default=None,
                   help="caption embeddings cache (default: DATA_DIR/embeddings.pickle)")
    p.add_argument("--feat_epochs", type=int, default=FEAT_EPOCHS,
                   help="training epochs of the feature net (part of its cache key)")
    p.add_argument("--seed", type=int, default=0, help="caption choice and generator noise")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--num_threads", type=int, default=0,
                   help="CPU threads for torch (0: torch's default; 1 is faster on a busy CPU)")
    p.add_argument("--wandb", dest="wandb_mode", choices=("online", "offline", "disabled"),
                   default=None, help="WandB mode (default: offline unless WANDB_API_KEY is set)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cfg = Config(data_dir=args.data_dir, cache_dir=args.cache_dir,
                 embeddings_path=args.embeddings_path, seed=args.seed, device=args.device,
                 num_threads=args.num_threads,
                 out_dir=args.out_dir, wandb_mode=args.wandb_mode)
    return run_cli(lambda: evaluate(args.net_g, cfg, n_per_kind=args.n_per_kind, k=args.k,
                                    feat_epochs=args.feat_epochs))


if __name__ == "__main__":
    sys.exit(main())
