"""Score a trained generator against held-out real garments, offline.

    python evaluate.py --net_g output/stage1/last.pt                   # built-in data
    python evaluate.py --net_g output/stage2/last.pt --data_dir DFMM --n_per_kind 100

Textbook FID needs Inception weights, which this repo cannot download. Instead the
repo trains its own judge, the *garment feature net*: a small CNN fitted once per
dataset and size on the real TRAINING images, at 64 px for a Stage-I generator and at
128 px for a Stage-II one (--feat_size; a 256 px image is area-downscaled to it, a
smaller one enlarged bicubically), to predict each image's garment kind
(captions.KINDS), colour (the sample's `data.colours[i]`, a name of captions.COLOURS) and
pattern (`data.patterns[i]`, a name of captions.PATTERNS; samples without one are
ignored by that head). These are the dataset's own attributes, the ones its captions
are derived from, so caption text is never parsed here. The net never sees generated
images and knows nothing about the generator, so it scores every generator the same
way. Its accuracy on the held-out real images is printed and written with the
results, so its verdicts can be weighed.

Held-out set: the samples whose split is "validation", which the training loop never
sees: labels.csv's split, a class-folder tree's validation/, val/ or test/ folders, or,
in a folder without a split such as the real DFMM, about 10% of the garments picked by
their identity with every view (datasets.identity_split). A dataset without such rows
gets a fixed 10% of each kind held out here, and the feature net trains on the rest;
the generator was then trained on those images too, which the run prints.

Metrics, each for the generated images and, as the reference, for real images:

* kind accuracy: for every kind with held-out images, `n_per_kind` of its held-out
  samples (shuffled by --seed, cycled when there are fewer) are drawn once each and
  one image is generated from each one's long caption (`data.emb`); the share of
  images the feature net classifies as the asked kind, per kind and overall.
  Real row: the held-out photos themselves (each once).
* colour accuracy, pattern accuracy: likewise for the sample's colour and pattern
  (samples without a pattern are left out of pattern accuracy), per kind and overall.
* drafts (set "drafts_upscaled", Stage-II generators only): the Stage-I drafts the
  "generated" images were refined from (the same noise and conditioning draws),
  upscaled bicubically to the Stage-II size and then judged exactly like them, for
  every accuracy, FD-garment, R-precision and the copy check: what Stage II adds over
  enlarging its draft.
* short prompts (set "generated_short"): the same samples, each drawn once more from
  its SHORT caption (`data.captions[i][1]`, e.g. "a red floral dress") with the same
  noise as its long-caption image, scored for kind, colour and pattern against the
  sample's attributes. (The short caption leaves "pure color" unsaid: a plain garment
  is its default.) A sample with a single caption has no short prompt and is left out.
* Russian prompts (set "generated_russian"): the same samples' short prompts as a
  designer may type them in Russian (captions.russian_prompt: "красное платье в
  цветочек", "Брюки тёмно-синие, в полоску", "пара белых туфель"), read into English
  by captions.read_prompt as `--train n` and the page read them, drawn with the same
  noise and scored like the short prompts; their accuracies beside the short prompts'
  say how much a designer loses by writing Russian. The share of these prompts read
  back to exactly their kind, colour and pattern is printed as well.
* FD-garment: the Frechet distance between Gaussians fitted to feature-net features
  (the pooled 8*width-d layer before the heads; `frechet_distance`). The held-out
  images of each kind with at least two of them are split once, with a fixed rng
  independent of --seed (`fd_halves`), into two disjoint halves A and B of equal size
  per kind (an odd image out is dropped). The floor is FD(real A, real B): what a
  generator whose images were as good as unseen real photos would score at this
  sample size. The generated value is FD(one image generated from the long caption of
  each sample of A, real B): the same size and the same reference set as the floor,
  and no image the feature net was fitted on. It is NOT FID: the features come from
  this small net, so values are comparable only between runs on the same dataset (the
  same cached feature net), and at the same sample sizes (FD is biased upward for
  small sets).
* R-precision@K analogue: see `r_precision` (kind, colour and pattern).
* variety: the mean RMS pixel distance between images drawn for one caption with
  different noise, beside that between real photos of one kind, colour and pattern
  (see `variety`); a generator that ignores its noise scores near 0.
* draft change (Stage-II generators only): the mean absolute pixel difference (0-1
  scale) between each image and its own upscaled draft; below 0.005 Stage II returns its
  drafts nearly unchanged (a new residual Stage II scores 0), so its figures are theirs.
* copies: the share of generated images whose nearest training photo (cosine of
  centred feature-net features) is nearer than 95% of the held-out photos' nearest training
  photo (see `copy_shares`); about 0.05 for new garments (the real row, by
  construction), near 1 for a generator that recalls its training photos.

Outputs under OUT_DIR/eval/: results.csv, a tidy table with the columns
`metric,set,kind,value,n` (metric: kind_accuracy | colour_accuracy |
pattern_accuracy | fd_garment | r_precision | variety | copies | draft_change (Stage II)
| feat_size (the feature net's size, set "featnet", n its training images); set:
real_heldout | generated | drafts_upscaled | generated_short | generated_russian | real_heldout_half (the FD
floor); kind: a kind or
"all"; n: images behind the value; a per-kind accuracy with n = 0, e.g. the pattern of a
kind whose samples name none, is written as nan), generated.png (up to 20 of the
evaluated long-caption images per kind, one row per kind) and, for Stage II,
drafts_upscaled.png (their drafts), and pattern_confusion.csv (`set,asked,named,n`: how
many images of the real held-out, generated, generated_short and, for Stage II,
drafts_upscaled sets asked for one pattern the feature net names as each pattern;
printed as the accuracy per pattern asked and the pattern most often named instead).
The metrics also go to WandB (job type "eval") unless --wandb disabled. The feature net
is cached as CACHE_DIR/featnet_<key>.pt, key = hash of its training samples' kinds,
colours and patterns, the vocabularies and its settings (its size among them), so it is
trained once per dataset and size.

The file carries its own judge (the feature net, its training and its cache) next to
the metrics, which makes it longer than ~500 lines: the judge is only ever used here.
results.csv's rows are the one source of the results; the returned dict, the printed
table and the WandB log are derived from them.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from captions import COLOURS, KINDS, PATTERNS, russian_prompt
from config import DEVICE, FIELD_RULES, PATH, SEED, TEXT, CliParser, Config, flag_type, one_of, whole
from datasets import attribute_ids, augment, prepare
from get_embeddings import encode_texts, load_data
import sample
from synthetic import ensure_synthetic
from utils import (UserError, _atomic_write, check_writable_dir, init_wandb, resolve_device,
                   run_cli, save_checkpoint, save_grid, verify_checksums)

FEATNET_VERSION = "garment-featnet-v2"
FEAT_SIZE = 64  # the feature net of a Stage-I generator works on 64 px images
FEAT_SIZES = (64, 128)  # --feat_size: a Stage-II generator is judged at 128 px by default
FEAT_EPOCHS = 12
FEAT_WIDTH = 16  # channels of the first block; the feature is 8 * width wide
FEAT_SEED = 0  # the feature net belongs to the dataset, not to an evaluation's --seed
HOLDOUT_FRACTION = 0.1
FD_SPLIT_SEED = 12345  # the FD halves are fixed per dataset, not per --seed
COPY_QUANTILE = 0.95  # copy check: nearer to a training photo than 95% of the held-out photos
GRID_COLUMNS = 20
DRAFT_CHANGE_MIN = 0.005  # a Stage II that moves its drafts less than this adds nothing to them

# The classes of the colour and pattern heads: the vocabulary of captions.py.
COLOUR_NAMES = tuple(COLOURS)
PATTERN_NAMES = tuple(PATTERNS)
IGNORE = -100  # target of a sample without the attribute (cross-entropy's ignore_index)


def attribute_targets(data) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(kind, colour, pattern) class indices of every sample of `data`, from its
    `kinds`, `colours` and `patterns` (IGNORE where a sample has no colour / pattern):
    the labels training uses (datasets.attribute_ids)."""
    ids = attribute_ids(data.kinds, data.colours, data.patterns).numpy()
    return ids[:, 0], ids[:, 1], ids[:, 2]


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
                k: int = 10, seed: int = 0, pattern_logp=None, own_pattern=None,
                pool_pattern=None) -> tuple[float, float]:
    """Text-image agreement: an R-precision@K analogue scored by the feature net.

    Image i asks for the caption attributes own_kind[i], own_colour[i] and, when the
    pattern arguments are given, own_pattern[i] (a negative colour or pattern: the
    caption has none). The attributes an image is judged on are its kind, its colour
    if it has one and its pattern if it has one. K-1 distractor captions are drawn
    without replacement from the pool (the held-out samples' attributes) among those
    that have every one of these attributes and differ from the own caption in at
    least one of them, so all candidates of one image are scored on the same terms.
    Each candidate is scored by log p(its kind | image) + log p(its colour | image)
    + log p(its pattern | image), each term only for an attribute the image is
    judged on. An image is a hit when its own caption scores strictly highest; ties
    count as misses, so a classifier that cannot tell the candidates apart scores 0,
    not 1/K. When fewer than K-1 distractors qualify, all of them are used; an image
    with none is left out. Without the pattern arguments it is the kind + colour score.

    Why this scorer: the captions of this data vary in exactly these attributes
    (kind, colour, pattern), and the scorer is a classifier trained on real photos for
    precisely them, independent of the generator and of the text encoder the
    generator conditions on. So a hit means the image shows the garment, colour and
    pattern its caption asks for more clearly than those of other captions.

    kind_logp (N, n_kinds), colour_logp (N, n_colours), pattern_logp (N, n_patterns):
    log-probabilities per image. Returns (hit rate, mean number of candidates per
    image incl. the own caption); the hit rate is NaN when no image had a distractor."""
    use_pattern = pattern_logp is not None
    if use_pattern and (own_pattern is None or pool_pattern is None):
        raise ValueError("pattern_logp needs own_pattern and pool_pattern")
    logps = [torch.as_tensor(np.asarray(kind_logp), dtype=torch.float64),
             torch.as_tensor(np.asarray(colour_logp), dtype=torch.float64)]
    own = [np.asarray(own_kind), np.asarray(own_colour)]
    pool = [np.asarray(pool_kind), np.asarray(pool_colour)]
    if use_pattern:
        logps.append(torch.as_tensor(np.asarray(pattern_logp), dtype=torch.float64))
        own.append(np.asarray(own_pattern))
        pool.append(np.asarray(pool_pattern))
    rng = np.random.default_rng(seed)
    eligible_cache: dict = {}
    hits, counted, cands = 0, 0, 0
    for i in range(len(own[0])):
        key = tuple(int(a[i]) for a in own)
        # the attributes image i is judged on: its kind, and colour / pattern if it has them
        judged = [0] + [a for a in range(1, len(key)) if key[a] >= 0]
        if key not in eligible_cache:
            has_all = np.ones(len(pool[0]), bool)
            differs = np.zeros(len(pool[0]), bool)
            for a in judged:
                has_all &= pool[a] >= 0
                differs |= pool[a] != key[a]
            eligible_cache[key] = np.flatnonzero(has_all & differs)
        elig = eligible_cache[key]
        if len(elig) == 0:
            continue
        pick = rng.choice(elig, size=min(k - 1, len(elig)), replace=False)
        score = torch.zeros(len(pick) + 1, dtype=torch.float64)
        for a in judged:
            cls = np.concatenate([[key[a]], pool[a][pick]])
            score = score + logps[a][i, torch.as_tensor(cls)]
        hits += int(score[0] > score[1:].max())
        counted += 1
        cands += len(pick) + 1
    if counted == 0:
        return float("nan"), 0.0
    return hits / counted, cands / counted


# -------------------------------------------------------------------------- feature net

class GarmentFeatureNet(nn.Module):
    """`size` px image in [-1, 1] -> (feature, kind logits, colour logits, pattern logits).

    At 64 px: four conv/BN/ReLU blocks with 2x max-pooling (64 -> 4 px, width..8*width
    channels), one more conv block at 4x4, global average pooling to the 8*width-d
    feature, and three linear heads. At 128 px the same net with one more block of
    `width` channels in front (128 -> 64 px), so that every later layer sees what it
    sees at 64 px, at twice the detail."""

    def __init__(self, width: int = FEAT_WIDTH, n_kinds: int = len(KINDS),
                 n_colours: int = len(COLOUR_NAMES), n_patterns: int = len(PATTERN_NAMES),
                 size: int = FEAT_SIZE):
        super().__init__()
        if size not in FEAT_SIZES:
            raise ValueError(f"the feature net works at {FEAT_SIZES} px, not {size}")
        extra = FEAT_SIZES.index(size)  # blocks in front of the 64 px net
        chans = [3] + [width] * extra + [width, width * 2, width * 4, width * 8]
        layers = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
                       nn.ReLU(True), nn.MaxPool2d(2)]
        layers += [nn.Conv2d(chans[-1], chans[-1], 3, 1, 1, bias=False),
                   nn.BatchNorm2d(chans[-1]), nn.ReLU(True), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.kind_head = nn.Linear(chans[-1], n_kinds)
        self.colour_head = nn.Linear(chans[-1], n_colours)
        self.pattern_head = nn.Linear(chans[-1], n_patterns)
        self.feat_dim = chans[-1]
        self.size = size

    def forward(self, x):
        f = self.body(x)
        return f, self.kind_head(f), self.colour_head(f), self.pattern_head(f)


def to_feat_size(images: torch.Tensor, size: int = FEAT_SIZE) -> torch.Tensor:
    """Square images of any size -> `size` px: larger ones by area resampling (each
    output pixel the mean of the pixels it covers), smaller ones bicubically."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    if images.shape[-1] > size:
        return F.interpolate(images, size=(size, size), mode="area")
    return upscale(images, size)


def upscale(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bicubic enlargement to `size` px, clipped to [-1, 1] (bicubic overshoots at
    edges): what a Stage-I draft looks like shown at the Stage-II size."""
    return F.interpolate(images, size=(size, size), mode="bicubic",
                         align_corners=False).clamp_(-1, 1)


@torch.no_grad()
def featurize(net: GarmentFeatureNet, images, device, batch: int = 256, desc: str | None = None,
              progress: bool = True):
    """(features (N, D), kind log-probs (N, K), colour log-probs (N, C), pattern
    log-probs (N, P)) on the CPU.

    `images`: a (N, 3, S, S) tensor in [-1, 1], or a callable idx -> such a batch
    together with N as (callable, N)."""
    net.eval()
    if isinstance(images, tuple):
        get, n = images
    else:
        get, n = (lambda idx: images[idx]), len(images)
    outs = ([], [], [], [])
    starts = range(0, n, batch)
    for s in tqdm(starts, desc=desc, unit="batch", disable=not progress or len(starts) < 2):
        x = to_feat_size(get(np.arange(s, min(s + batch, n))).float(), net.size).to(device)
        f, *logits = net(x)
        outs[0].append(f.float().cpu())
        for o, lg in zip(outs[1:], logits):
            o.append(F.log_softmax(lg.float(), 1).cpu())
    if not outs[0]:
        return (torch.zeros(0, net.feat_dim), torch.zeros(0, net.kind_head.out_features),
                torch.zeros(0, net.colour_head.out_features),
                torch.zeros(0, net.pattern_head.out_features))
    return tuple(torch.cat(o) for o in outs)


def _accuracy(logp: torch.Tensor, target) -> tuple[float, int]:
    """(share of rows whose argmax is the target, number of rows with a target >= 0)."""
    target = torch.as_tensor(np.asarray(target), dtype=torch.long)
    ok = target >= 0
    n = int(ok.sum())
    if n == 0:
        return float("nan"), 0
    return float((logp.argmax(1)[ok] == target[ok]).double().mean()), n


def confusion(logp: torch.Tensor, target, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts: row the class asked for (the target), column the
    class the feature net names (the argmax of logp); rows without a target (< 0) are
    left out. Its diagonal over its row sums is the per-class accuracy."""
    target = np.asarray(target, dtype=np.int64)
    ok = target >= 0
    named = logp.argmax(1).numpy()[ok]
    counts = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(counts, (target[ok], named), 1)
    return counts


def featnet_key(data, train_idx, index_key: str, width: int, epochs: int,
                size: int = FEAT_SIZE) -> str:
    """Hash of what the feature net learns from: the training samples and their kind,
    colour and pattern targets, the vocabularies and the settings (its size among them)."""
    h = hashlib.sha256()
    h.update(json.dumps([FEATNET_VERSION, index_key, width, epochs, FEAT_SEED, size,
                         len(train_idx), list(KINDS), list(COLOUR_NAMES),
                         list(PATTERN_NAMES)]).encode())
    for i in train_idx:
        h.update(f"{int(i)}|{data.kinds[i]}|{data.colours[i]}|{data.patterns[i]}\n".encode())
    return h.hexdigest()[:16]


def train_feature_net(data, train_idx, device, epochs: int = FEAT_EPOCHS, width: int = FEAT_WIDTH,
                      batch_size: int = 64, lr: float = 2e-3, progress: bool = True,
                      size: int = FEAT_SIZE):
    """Fit a GarmentFeatureNet of `size` px on the real images `train_idx` of `data` (a
    FashionData at that size): kind, colour and pattern cross-entropy (targets from data.kinds,
    data.colours, data.patterns; a missing colour or pattern is ignored), Adam with a
    linearly decaying LR, random flips and small shifts. Deterministic for a given
    input (FEAT_SEED)."""
    train_idx = np.asarray(train_idx)
    kind_t, colour_t, pattern_t = (torch.from_numpy(t[train_idx])
                                   for t in attribute_targets(data))
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(FEAT_SEED)
        rng = torch.Generator().manual_seed(FEAT_SEED)
        net = GarmentFeatureNet(width, size=size).to(device).train()
        opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-4)
        bs = max(2, min(batch_size, len(train_idx)))  # BatchNorm needs 2 per batch
        steps = max(1, len(train_idx) // bs) * epochs
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.02, 1 - s / steps))
        for epoch in range(epochs):
            perm = torch.randperm(len(train_idx), generator=rng)
            batches = [perm[s:s + bs] for s in range(0, len(perm) - bs + 1, bs)]
            bar = tqdm(batches, desc=f"feature net epoch {epoch + 1}/{epochs}", unit="batch",
                       disable=not progress)
            for b in bar:
                x = augment(data.pixels(train_idx[b.numpy()]), rng, max_shift=0.04, max_zoom=0.05)
                _, kl, cl, pl = net(to_feat_size(x, size).to(device))
                loss = F.cross_entropy(kl, kind_t[b].to(device))
                for logits, t in ((cl, colour_t[b]), (pl, pattern_t[b])):
                    if (t >= 0).any():
                        loss = loss + F.cross_entropy(logits, t.to(device), ignore_index=IGNORE)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                bar.set_postfix(loss=f"{loss.item():.3f}")
    return net.eval()


def load_or_train_feature_net(cfg: Config, data, train_idx, heldout_idx, index_key: str, device,
                              epochs: int = FEAT_EPOCHS, width: int = FEAT_WIDTH,
                              progress: bool = True, size: int = FEAT_SIZE):
    """The cached `size` px feature net for these training images, trained and cached
    when missing. Returns (net, info) with info = {path, trained, seconds, size,
    kind_acc, colour_acc, pattern_acc, n_heldout, n_heldout_colour, n_heldout_pattern,
    n_train}."""
    key = featnet_key(data, train_idx, index_key, width, epochs, size)
    path = cfg.resolved_cache_dir() / f"featnet_{key}.pt"
    if path.is_file():
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if verify_checksums(obj, path) and obj.get("version") == FEATNET_VERSION and obj.get("key") == key \
                    and list(obj.get("kinds", ())) == list(KINDS) \
                    and list(obj.get("colours", ())) == list(COLOUR_NAMES) \
                    and list(obj.get("patterns", ())) == list(PATTERN_NAMES) \
                    and obj.get("size", FEAT_SIZE) == size:
                net = GarmentFeatureNet(int(obj["width"]), size=size)
                net.load_state_dict(obj["state_dict"])
                return net.to(device).eval(), {**obj["info"], "path": str(path), "trained": False,
                                               "seconds": 0.0, "size": size}
        except Exception as e:  # unreadable or foreign file: train again
            print(f"feature net cache {path} unusable ({str(e).splitlines()[0]}); retraining")
    print(f"training the {size} px garment feature net on {len(train_idx)} real training images "
          f"({epochs} epochs)")
    t0 = time.time()
    net = train_feature_net(data, train_idx, device, epochs=epochs, width=width, progress=progress,
                            size=size)
    seconds = time.time() - t0
    heldout_idx = np.asarray(heldout_idx)
    _, kl, cl, pl = featurize(net, (lambda idx: data.pixels(heldout_idx[idx]), len(heldout_idx)),
                              device, progress=False)
    kinds, colours, patterns = attribute_targets(data)
    kind_acc, _ = _accuracy(kl, kinds[heldout_idx])
    colour_acc, n_c = _accuracy(cl, colours[heldout_idx])
    pattern_acc, n_p = _accuracy(pl, patterns[heldout_idx])
    info = {"kind_acc": kind_acc, "colour_acc": colour_acc, "pattern_acc": pattern_acc,
            "n_heldout": len(heldout_idx), "n_heldout_colour": n_c, "n_heldout_pattern": n_p,
            "n_train": len(train_idx), "train_seconds": seconds}
    obj = {"version": FEATNET_VERSION, "key": key, "width": width, "epochs": epochs, "size": size,
           "colours": list(COLOUR_NAMES), "patterns": list(PATTERN_NAMES), "kinds": list(KINDS),
           "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()}, "info": info}
    try:
        save_checkpoint(obj, path)  # with checksums: a damaged cache is trained again
    except OSError as e:
        print(f"could not cache the feature net in {path.parent} ({e.strerror or e}); "
              "it will be trained again next time (set --cache_dir to a writable folder)")
    return net, {**info, "path": str(path), "trained": True, "seconds": seconds, "size": size}


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


def fd_halves(held_idx, kinds) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint halves (A, B) of the held-out indices for FD-garment.

    `kinds[i]`: the kind (name or index) of sample i. Per kind, in KINDS order, the
    kind's held-out indices are shuffled by a fixed rng (FD_SPLIT_SEED, independent of
    --seed) and the first floor(n/2) go to A, the next floor(n/2) to B (an odd one
    out is dropped), so A and B have the same size per kind. A kind with fewer than
    two held-out images is left out. Both come grouped by kind in KINDS order."""
    held_idx = np.asarray(held_idx, dtype=np.int64)
    kinds = np.asarray(kinds)
    if kinds.dtype.kind not in "iu":
        kinds = np.array([KINDS.index(k) for k in kinds], dtype=np.int64)
    rng = np.random.default_rng(FD_SPLIT_SEED)
    a, b = [], []
    for kd in range(len(KINDS)):
        idx = held_idx[kinds[held_idx] == kd]
        if len(idx) < 2:
            continue
        perm = rng.permutation(idx)
        h = len(idx) // 2
        a.append(perm[:h])
        b.append(perm[h:2 * h])
    empty = np.zeros(0, np.int64)
    return (np.concatenate(a) if a else empty), (np.concatenate(b) if b else empty)


def _cycle(idx: np.ndarray, n: int) -> np.ndarray:
    return idx[np.arange(n) % len(idx)]


def _load_eval_data(cfg: Config, progress: bool, size: int = FEAT_SIZE):
    """(every sample at `size` px, its split, the image cache's key)."""
    if cfg.data_dir is None:
        print(f"no --data_dir: evaluating on the built-in synthetic garments in {cfg.builtin_dir}")
        ensure_synthetic(cfg.builtin_dir, n_per_kind=cfg.builtin_per_kind, seed=0)
    index = prepare(cfg, size, progress=progress)
    data = load_data(cfg, size, split=None, progress=progress, index=index)
    splits = [index["splits"][r] for r in data.rows]
    return data, splits, index["key"]


def _noise_seed(seed: int, kind: int, part: int) -> int:
    """Generator noise seed of one kind's images: part 0 the accuracy set (its long and
    short prompts share the noise), part 1 the FD set."""
    return seed * 1000 + 10 * part + kind

# ------------------------------------------------------------------------------ main

ATTRS = ("kind", "colour", "pattern")  # metric <attr>_accuracy, metrics key <attr>_acc_<set>
# (metrics key part, results.csv set) of every image set; "drafts" only for a Stage-II G
SETS = (("real", "real_heldout"), ("generated", "generated"), ("drafts", "drafts_upscaled"),
        ("short", "generated_short"), ("russian", "generated_russian"))


def default_feat_size(stage: int) -> int:
    """The feature net's size when --feat_size is not given: 64 px for a Stage-I
    generator, 128 px for a Stage-II one (its images and its upscaled drafts are both
    area-downscaled to it)."""
    return FEAT_SIZE if stage == 1 else 128


def evaluate(net_g_path, cfg: Config, n_per_kind: int = 100, k: int = 10,
             feat_epochs: int = FEAT_EPOCHS, feat_width: int = FEAT_WIDTH,
             feat_size: int | None = None, progress: bool = True) -> dict:
    """Evaluate the generator checkpoint `net_g_path` on cfg's dataset.

    cfg supplies the data (data_dir, builtin_dir, cache_dir, embeddings_path), seed,
    device, out_dir and wandb_mode; the generator's sizes come from its checkpoint.
    feat_size: the feature net's size (None: default_feat_size of the generator's stage).
    Returns the metrics (see the module docstring) and writes OUT_DIR/eval/."""
    check_eval_sizes(n_per_kind, k, feat_epochs, feat_size)
    device = resolve_device(cfg.device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    netG, gcfg, _ = sample.load_generator(net_g_path, device)
    feat_size = feat_size or default_feat_size(gcfg.stage)
    with_drafts = gcfg.stage == 2  # Stage II is scored beside its own upscaled drafts
    out = check_writable_dir(Path(cfg.out_dir) / "eval")
    # the captions are embedded with the generator's text model
    ecfg = dataclasses.replace(cfg, text_model=gcfg.text_model, text_dim=gcfg.text_dim)
    if gcfg.resolved_data_dir().resolve() != ecfg.resolved_data_dir().resolve():
        print(f"note: {net_g_path} was trained on {gcfg.resolved_data_dir()}, "
              f"evaluating on {ecfg.resolved_data_dir()}")

    data, splits, index_key = _load_eval_data(ecfg, progress, feat_size)
    train_idx, held_idx, self_made = heldout_split(data, splits, ecfg, gcfg, net_g_path)
    net, finfo = load_or_train_feature_net(ecfg, data, train_idx, held_idx, index_key, device,
                                           epochs=feat_epochs, width=feat_width,
                                           progress=progress, size=feat_size)
    print_featnet(finfo)
    judged = judging_note(gcfg, feat_size)
    print(judged)

    targets = attribute_targets(data)  # kind, colour, pattern class of every sample
    kinds_all = targets[0]
    # real held-out images, each once
    r_feat, *r_logp = featurize(net, (lambda idx: data.pixels(held_idx[idx]), len(held_idx)),
                                device, desc="features: held-out", progress=progress)
    r_t = [t[held_idx] for t in targets]
    present, sel, has_short, short_emb = draw_eval_samples(data, held_idx, r_t[0], n_per_kind,
                                                           ecfg.seed)
    g_t = [t[sel] for t in targets]
    s_t = [t[has_short] for t in g_t]
    twins, readings, ru_emb = russian_twins(data, sel, ecfg.text_model)
    ru_read_back = float(np.mean([r.kind == data.kinds[i] and r.colours == (data.colours[i],)
                                  and r.patterns == said_patterns(data.patterns[i])
                                  for r, i in zip(readings, sel)]))
    fd_a, fd_b = fd_halves(held_idx, kinds_all)  # two disjoint halves of the held-out images
    fd_present = [kd for kd in range(len(KINDS)) if (kinds_all[fd_a] == kd).any()]

    print(f"generating {len(sel)} images ({n_per_kind} per kind, {len(present)} kinds) from "
          f"long, as many from short captions and from their Russian twins, and {len(fd_a)} "
          f"for FD-garment, with {net_g_path}")
    examples = list(zip(twins, readings))[::n_per_kind][:3]  # one per kind
    print("Russian prompts, e.g. " + "; ".join(f"{t!r} -> {r.text!r}" for t, r in examples))
    gen = generate_eval_images(netG, data, present, sel, short_emb, n_per_kind, ecfg.seed,
                               device, progress, feat_size, with_drafts, ru_emb)
    feats, logps = {}, {"real": r_logp}  # set -> features, [kind, colour, pattern log-probs]
    for s in ("generated", "drafts", "short", "russian"):
        if gen[s] is not None:
            images = gen[s][torch.as_tensor(has_short)] if s in ("short", "russian") else gen[s]
            feats[s], *logps[s] = featurize(net, images, device, desc=f"features: {s}",
                                            progress=progress)
    feats.pop("short")  # the copy check is made on the long-caption images
    feats.pop("russian")
    fd = fd_garment(net, netG, data, held_idx, r_feat, fd_a, fd_b, fd_present, kinds_all,
                    ecfg.seed, device, progress, feat_size, with_drafts)

    var_gen, var_real, n_var = variety(netG, data, held_idx, r_t, present, ecfg.seed, device,
                                       feat_size)
    copies, copy_threshold = copy_check(net, data, train_idx, r_feat, feats, device, progress)

    # accuracies: (attribute, set, kind name or "all") -> (value, n)
    set_targets = {"real": r_t, "generated": g_t, "drafts": g_t, "short": s_t, "russian": s_t}
    acc = accuracies({s: (logps[s], set_targets[s]) for s in logps}, present)
    name = dict(SETS)
    # which pattern the images show for each pattern asked for (real, generated, drafts,
    # and the same samples drawn from their short captions)
    pattern_conf = {name[s]: confusion(logps[s][2], set_targets[s][2], len(PATTERN_NAMES))
                    for s in ("real", "generated", "drafts", "short") if s in logps}
    rp = {}  # set -> (hit rate, candidates per image)
    for s in ("real", "generated", "drafts"):
        if s in logps:
            lp, t = logps[s], set_targets[s]
            rp[s] = r_precision(lp[0], lp[1], t[0], t[1], r_t[0], r_t[1], k, seed=ecfg.seed,
                                pattern_logp=lp[2], own_pattern=t[2], pool_pattern=r_t[2])
    others = [("fd_garment", "generated", "all", fd["generated"], len(fd_a)),
              ("fd_garment", "real_heldout_half", "all", fd["floor"], len(fd_b))]
    if with_drafts:
        others.append(("fd_garment", "drafts_upscaled", "all", fd["drafts"], len(fd_a)))
        others.append(("draft_change", "generated", "all", float(gen["change"].mean()),
                       len(gen["change"])))
    others += [("r_precision", name[s], "all", rp[s][0], len(held_idx if s == "real" else sel))
               for s in rp]
    others += [("variety", "real_heldout", "all", var_real, len(held_idx)),
               ("variety", "generated", "all", var_gen, n_var * VARIETY_DRAWS)]
    others += [("copies", name[s], "all", share, n) for s, (share, n) in copies.items()]
    others.append(("feat_size", "featnet", "all", feat_size, len(train_idx)))
    rows = result_rows(acc, present, others)
    metrics = metrics_from_rows(rows)
    metrics.update({
        "k": k, "candidates_real": rp["real"][1], "candidates_generated": rp["generated"][1],
        "n_heldout": len(held_idx), "n_generated": len(sel),
        "n_generated_short": int(has_short.sum()), "n_fd": len(fd_a),
        "russian_read_back": ru_read_back,
        "fd_kinds": [KINDS[kd] for kd in fd_present], "copy_threshold": copy_threshold,
        "heldout_made_here": self_made, "per_kind": per_kind_from_rows(rows),
        "featnet": finfo, "net_g": str(net_g_path), "stage": gcfg.stage,
        "feat_size": feat_size, "judged": judged,
        "pattern_confusion": {set_name: c.tolist() for set_name, c in pattern_conf.items()},
    })
    csv_path = write_rows(rows, out / "results.csv")
    conf_path = write_confusion(pattern_conf, out / "pattern_confusion.csv")
    # grid: one row per kind, up to GRID_COLUMNS of its evaluated (long-caption) images
    labels = [KINDS[kd] for kd in present]
    cols = min(n_per_kind, GRID_COLUMNS)
    grid = save_grid(torch.cat(gen["shown"]), out / "generated.png", nrow=cols, row_labels=labels)
    metrics["csv"], metrics["grid"] = str(csv_path), str(grid)
    if with_drafts:  # the same captions and noise: the drafts these images refine
        metrics["drafts_grid"] = str(save_grid(torch.cat(gen["shown_drafts"]),
                                               out / "drafts_upscaled.png", nrow=cols,
                                               row_labels=labels))

    print_table(metrics)
    print_pattern_confusion(pattern_conf)
    print(f"wrote {csv_path}, {conf_path} and {grid}" + (
        f" (its drafts: {metrics['drafts_grid']})" if with_drafts else ""))
    log_to_wandb(ecfg, out, metrics, grid)
    return metrics


# --------------------------------------------------------------- evaluation steps

def check_eval_sizes(n_per_kind: int, k: int, feat_epochs: int, feat_size: int | None = None):
    if n_per_kind < 1:
        raise UserError(f"--n_per_kind must be at least 1, got {n_per_kind}")
    if k < 2:
        raise UserError(f"--k must be at least 2 (the own caption and one distractor), got {k}")
    if feat_epochs < 1:
        raise UserError(f"--feat_epochs must be at least 1, got {feat_epochs}")
    if feat_size is not None and feat_size not in FEAT_SIZES:
        raise UserError(f"--feat_size must be one of {', '.join(map(str, FEAT_SIZES))}, "
                        f"got {feat_size}")


def heldout_split(data, splits, cfg: Config, gcfg: Config, net_g_path):
    """split_heldout with plain errors when either side is empty or the embeddings do
    not fit the generator."""
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
    else:
        print(f"held out by the data: {len(held_idx)} images of split validation, which "
              "training never sees")
    if data.emb.shape[1] != gcfg.text_dim:
        raise UserError(f"caption embeddings have {data.emb.shape[1]} dims, {net_g_path} "
                        f"expects {gcfg.text_dim}")
    return train_idx, held_idx, self_made


def print_featnet(finfo: dict):
    how = f"trained in {finfo['seconds']:.0f}s" if finfo["trained"] else "cached"
    print(f"garment feature net at {finfo['size']} px ({how}, {finfo['path']}): "
          f"held-out kind accuracy {finfo['kind_acc']:.3f} (n={finfo['n_heldout']}), colour "
          f"accuracy {finfo['colour_acc']:.3f} (n={finfo['n_heldout_colour']}), pattern "
          f"accuracy {_fmt(finfo['pattern_acc'])} (n={finfo['n_heldout_pattern']})")


def draw_eval_samples(data, held_idx, held_kinds, n_per_kind: int, seed: int):
    """The samples to generate from: n_per_kind per held-out kind, shuffled by the seed,
    cycled. Returns (kinds present, sample indices, has-a-short-caption mask, the
    short-prompt embeddings: each sample's second caption, its long one where it has no
    other, so that the noise stays paired with the long-caption image)."""
    rng = np.random.default_rng(seed)
    present = [kd for kd in range(len(KINDS)) if (held_kinds == kd).any()]
    sel = np.concatenate([_cycle(rng.permutation(held_idx[held_kinds == kd]), n_per_kind)
                          for kd in present])
    sel_t = torch.as_tensor(sel)
    has_short = (data.text_count[sel_t] > 1)
    short_emb = data.text_emb[data.text_start[sel_t] + has_short.long()]
    return present, sel, has_short.numpy(), short_emb


def generate(netG, emb: torch.Tensor, n: int, seed: int, with_drafts: bool):
    """(images, drafts): n images per text embedding from netG, and, when with_drafts
    (a Stage-II netG), the Stage-I drafts those very images were refined from (the same
    noise and conditioning draws), upscaled bicubically to the images' size; else None."""
    if not with_drafts:
        return sample.sample_images(netG, emb, n, seed), None
    img, low = sample.sample_images(netG, emb, n, seed, with_drafts=True)
    return img, upscale(low, img.shape[-1])


def said_patterns(pattern) -> tuple:
    """The pattern a short caption names: none for a plain garment or an unknown one."""
    return () if pattern in (None, "pure color") else (pattern,)


def russian_twins(data, sel, text_model: str):
    """(Russian prompts, their readings, the readings' embeddings (len(sel), D)): for each
    selected sample the Russian of its short prompt (kind, colour and the pattern the short
    caption names), the phrasing varied with its position."""
    twins = [russian_prompt(data.kinds[i], data.colours[i], (said_patterns(data.patterns[i])
                                                             or (None,))[0], variant=j)
             for j, i in enumerate(sel)]
    readings = [sample.read_prompt(t) for t in twins]
    emb = torch.from_numpy(encode_texts([r.text for r in readings], text_model))
    return twins, readings, emb


def generate_eval_images(netG, data, present, sel, short_emb, n_per_kind: int, seed: int,
                         device, progress: bool, feat_size: int = FEAT_SIZE,
                         with_drafts: bool = False, ru_emb=None) -> dict:
    """{"generated": long-caption images, "drafts": their upscaled drafts (with_drafts)
    or None, "short": short-caption images, "russian": the images of the short prompts'
    Russian twins (ru_emb; None without), "shown" / "shown_drafts": the grid's images at
    full size}: one kind at a time, kept at feat_size (plus the grid's images) so that
    memory stays bounded by n_per_kind for 256 px Stage-II images."""
    images, drafts, short_images, ru_images, shown, shown_drafts = [], [], [], [], [], []
    changes = []  # per image: how far Stage II moved it from its upscaled draft
    cols = min(n_per_kind, GRID_COLUMNS)
    sel_t = torch.as_tensor(sel)
    for j, kd in enumerate(tqdm(present, desc="generating", unit="kind", disable=not progress)):
        rows = slice(j * n_per_kind, (j + 1) * n_per_kind)
        noise_seed = _noise_seed(seed, kd, 0)
        img, draft = generate(netG, data.emb[sel_t[rows]].to(device), 1, noise_seed, with_drafts)
        shown.append(img[:cols])
        images.append(to_feat_size(img, feat_size))
        if with_drafts:
            shown_drafts.append(draft[:cols])
            drafts.append(to_feat_size(draft, feat_size))
            changes.append(draft_change(img, draft))
        short_images.append(to_feat_size(
            sample.sample_images(netG, short_emb[rows].to(device), 1, noise_seed), feat_size))
        if ru_emb is not None:
            ru_images.append(to_feat_size(
                sample.sample_images(netG, ru_emb[rows].to(device), 1, noise_seed), feat_size))
    return {"generated": torch.cat(images), "drafts": torch.cat(drafts) if drafts else None,
            "short": torch.cat(short_images),
            "russian": torch.cat(ru_images) if ru_images else None,
            "shown": shown, "shown_drafts": shown_drafts,
            "change": torch.cat(changes) if changes else None}


def draft_change(img: torch.Tensor, draft: torch.Tensor) -> torch.Tensor:
    """Per image, the mean absolute pixel difference (0-1 scale) between a Stage-II image
    and its upscaled draft: 0 for a Stage II that returns its drafts (a new residual one,
    or one whose detail path has shut); the built-in data's sharpening Stage II scored
    0.017-0.025."""
    return ((img.float() - draft.float()).abs() / 2).flatten(1).mean(1).cpu()


def fd_garment(net, netG, data, held_idx, r_feat, fd_a, fd_b, fd_present, kinds_all, seed: int,
               device, progress: bool, feat_size: int = FEAT_SIZE,
               with_drafts: bool = False) -> dict:
    """{"floor": FD(real A, real B), "generated": FD(generated from A's captions, real B),
    "drafts": FD(their upscaled drafts, real B) when with_drafts}; NaN when no kind has
    two held-out images."""
    if not len(fd_a):
        print("no kind has two held-out images: FD-garment is left out")
        return {"floor": float("nan"), "generated": float("nan"), "drafts": float("nan")}
    fd_images, fd_drafts = [], []
    for kd in fd_present:
        part = torch.as_tensor(fd_a[kinds_all[fd_a] == kd])
        img, draft = generate(netG, data.emb[part].to(device), 1, _noise_seed(seed, kd, 1),
                              with_drafts)
        fd_images.append(to_feat_size(img, feat_size))
        if with_drafts:
            fd_drafts.append(to_feat_size(draft, feat_size))
    pos = {int(i): p for p, i in enumerate(held_idx)}
    feat_b = r_feat[torch.as_tensor([pos[int(i)] for i in fd_b])]
    feat_a = r_feat[torch.as_tensor([pos[int(i)] for i in fd_a])]
    fd_feat, *_ = featurize(net, torch.cat(fd_images), device, desc="features: FD set",
                            progress=progress)
    out = {"floor": frechet_distance(feat_a, feat_b),
           "generated": frechet_distance(fd_feat, feat_b)}
    if with_drafts:
        draft_feat, *_ = featurize(net, torch.cat(fd_drafts), device, desc="features: FD drafts",
                                   progress=progress)
        out["drafts"] = frechet_distance(draft_feat, feat_b)
    return out


VARIETY_PROMPTS = 8  # held-out captions per kind whose images are compared
VARIETY_DRAWS = 8  # images per caption


def mean_pairwise_rms(groups) -> float:
    """Mean RMS pixel distance (images in [-1, 1], measured on the [0, 1] scale) over all
    pairs inside each group of images (G, 3, S, S); groups of one image are skipped."""
    dists = []
    for g in groups:
        if len(g) < 2:
            continue
        x = ((g.float() + 1) / 2).flatten(1)
        d = torch.cdist(x, x) / x.shape[1] ** 0.5
        iu = torch.triu_indices(len(g), len(g), 1)
        dists.append(d[iu[0], iu[1]])
    return torch.cat(dists).mean().item() if dists else float("nan")


def variety(netG, data, held_idx, held_t, present, seed: int, device,
            feat_size: int = FEAT_SIZE) -> tuple[float, float, int]:
    """(generated, real, number of captions): within-prompt variety, the mean RMS pixel
    distance between two of VARIETY_DRAWS images drawn for one held-out caption (its first,
    long one), over VARIETY_PROMPTS captions per kind; beside it the same distance between
    real held-out photos of one kind, colour and pattern (what one caption may mean),
    both at feat_size (the data's size). held_t: the (kind, colour, pattern) targets of
    the held-out samples."""
    groups = []
    for kd in present:
        part = torch.as_tensor(held_idx[held_t[0] == kd][:VARIETY_PROMPTS])
        img = to_feat_size(sample.sample_images(netG, data.emb[part].to(device), VARIETY_DRAWS,
                                                _noise_seed(seed, kd, 2)), feat_size)
        groups += list(img.view(len(part), VARIETY_DRAWS, *img.shape[1:]))
    _, group_of = np.unique(np.stack(held_t, 1), axis=0, return_inverse=True)
    real = [data.pixels(held_idx[group_of.ravel() == g][:VARIETY_DRAWS])
            for g in range(group_of.max() + 1)]
    return mean_pairwise_rms(groups), mean_pairwise_rms(real), len(groups)


def nearest_similarity(feats: torch.Tensor, bank: torch.Tensor, centre: torch.Tensor,
                       chunk: int = 256) -> np.ndarray:
    """For each row of feats (N, D), the cosine similarity of its nearest row of bank
    (M, D), both taken relative to `centre` (D,), in float64; chunked so that memory
    stays at chunk * M."""
    f = F.normalize(feats.double() - centre, dim=1)
    b = F.normalize(bank.double() - centre, dim=1)
    if len(f) == 0 or len(b) == 0:
        return np.full(len(f), np.nan)
    return torch.cat([(f[s:s + chunk] @ b.T).max(1).values
                      for s in range(0, len(f), chunk)]).numpy()


def copy_shares(sets: dict, train_feat, held_feat,
                quantile: float = COPY_QUANTILE) -> tuple[dict, float]:
    """The copy check. ({set: (share of its images that are copies, n)}, threshold).

    An image's nearness to the training set is the feature-net cosine similarity of
    its nearest training photo, the features centred on the training photos' mean
    (pooled ReLU features all lie in one orthant, where every raw cosine is near 1). The
    threshold is the `quantile` of that similarity over
    the held-out photos (photos the generator never saw); an image nearer than that,
    strictly, counts as a copy. A generator that draws new garments scores about
    1 - quantile, like unseen photos; one that recalls its training photos scores near
    1. The held-out photos themselves come back as set "real" (about 1 - quantile by
    construction, the reference). sets: {name: features (N, D)}."""
    centre = torch.as_tensor(train_feat).double().mean(0)
    held_sim = nearest_similarity(held_feat, train_feat, centre)
    threshold = float(np.quantile(held_sim, quantile)) if len(held_sim) else float("nan")
    out = {"real": (float((held_sim > threshold).mean()) if len(held_sim) else float("nan"),
                    len(held_sim))}
    for name, feats in sets.items():
        sim = nearest_similarity(feats, train_feat, centre)
        out[name] = (float((sim > threshold).mean()) if len(sim) else float("nan"), len(sim))
    return out, threshold


def copy_check(net, data, train_idx, r_feat, feats: dict, device, progress: bool):
    """copy_shares of the generated sets in `feats` against the feature-net features
    of every training photo (the generator's training split) and of the held-out ones
    (r_feat)."""
    t_feat, *_ = featurize(net, (lambda idx: data.pixels(train_idx[idx]), len(train_idx)),
                           device, desc="features: training photos", progress=progress)
    return copy_shares(feats, t_feat, r_feat)


def accuracies(sets: dict, present) -> dict:
    """{(attribute, set, kind name or "all"): (value, n)} from {set: (log-probabilities
    per attribute, targets per attribute)}."""
    acc = {}
    for s, (logps, ts) in sets.items():
        for attr, logp, t in zip(ATTRS, logps, ts):
            acc[(attr, s, "all")] = _accuracy(logp, t)
            for kd in present:
                m = ts[0] == kd
                acc[(attr, s, KINDS[kd])] = _accuracy(logp[torch.as_tensor(m)], t[m])
    return acc


# ------------------------------------------------------------ one shape, the rows

def result_rows(acc: dict, present, others) -> list[tuple]:
    """The results as results.csv rows (metric, set, kind, value, n): the one source
    of the metrics dict, the printed table and the WandB log. The accuracy rows are
    those of the sets `acc` holds, in SETS order."""
    rows = []
    for attr in ATTRS:
        for kind in ["all"] + [KINDS[kd] for kd in present]:
            for s, set_name in SETS:
                if (attr, s, kind) in acc:
                    rows.append((f"{attr}_accuracy", set_name, kind, *acc[(attr, s, kind)]))
    return rows + list(others)


SET_KEY = {set_name: s for s, set_name in SETS}  # results.csv set -> metrics key part
SCALAR_KEYS = {("fd_garment", "generated"): "fd_garment",
               ("fd_garment", "real_heldout_half"): "fd_garment_floor",
               ("fd_garment", "drafts_upscaled"): "fd_garment_drafts",
               ("r_precision", "real_heldout"): "r_precision_real",
               ("r_precision", "generated"): "r_precision_generated",
               ("r_precision", "drafts_upscaled"): "r_precision_drafts",
               ("variety", "real_heldout"): "variety_real",
               ("variety", "generated"): "variety_generated",
               ("copies", "real_heldout"): "copies_real",
               ("copies", "generated"): "copies_generated",
               ("copies", "drafts_upscaled"): "copies_drafts",
               ("draft_change", "generated"): "draft_change"}


def metrics_from_rows(rows) -> dict:
    """Overall values: <attr>_acc_<set> and the FD / R-precision / variety / copies keys."""
    m = {}
    for metric, set_name, kind, value, _ in rows:
        if metric.endswith("_accuracy") and kind == "all":
            m[f"{metric[:-len('_accuracy')]}_acc_{SET_KEY[set_name]}"] = value
    for metric, set_name, kind, value, _ in rows:
        if (metric, set_name) in SCALAR_KEYS:
            m[SCALAR_KEYS[(metric, set_name)]] = value
    return m


def per_kind_from_rows(rows) -> dict:
    """{kind: {<attr>_<set>: value, n_<attr>_<set>: n}} of the per-kind accuracies."""
    per_kind = {}
    for metric, set_name, kind, value, n in rows:
        if metric.endswith("_accuracy") and kind != "all":
            key = f"{metric[:-len('_accuracy')]}_{SET_KEY[set_name]}"
            per_kind.setdefault(kind, {}).update({key: value, f"n_{key}": n})
    return per_kind


def write_rows(rows, path: Path, header=("metric", "set", "kind", "value", "n")) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    _atomic_write(path, lambda f: f.write(buf.getvalue().encode()))
    return path


def write_confusion(conf: dict, path: Path) -> Path:
    """pattern_confusion.csv: set, asked, named, n for every pair of patterns (zeros too)."""
    rows = [(set_name, asked, named, int(counts[a, b])) for set_name, counts in conf.items()
            for a, asked in enumerate(PATTERN_NAMES) for b, named in enumerate(PATTERN_NAMES)]
    return write_rows(rows, path, header=("set", "asked", "named", "n"))


def log_to_wandb(cfg: Config, out: Path, metrics: dict, grid):
    """The metrics' numbers (overall, per kind, the feature net's) and the grid."""
    run = init_wandb(cfg, "eval", out)
    if run is None:
        return
    try:
        flat = {f"eval/{k_}": v for k_, v in metrics.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)}
        flat.update({f"eval/{attr}_acc_{kn}_{s}": v[f"{attr}_{s}"]
                     for kn, v in metrics["per_kind"].items() for attr in ATTRS for s, _ in SETS
                     if f"{attr}_{s}" in v})
        flat.update({f"eval/featnet_{attr}_acc": metrics["featnet"][f"{attr}_acc"]
                     for attr in ATTRS})
        try:
            import wandb  # optional: only a run that logs images needs it
            flat["eval/generated"] = wandb.Image(str(grid))
        except Exception:
            pass
        run.log(flat)
    finally:
        run.finish()


def _fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "-"
    return f"{v:.{digits}f}"


def print_pattern_confusion(conf: dict):
    """Pattern accuracy per pattern asked for, and what the images show instead most
    often: "striped 0.92 (n 25), floral 0.40 (n 30; 0.47 dotted)"."""
    for set_name, counts in conf.items():
        cells = []
        for a, asked in enumerate(PATTERN_NAMES):
            n = int(counts[a].sum())
            if n == 0:
                continue
            cell = f"{asked} {_fmt(counts[a, a] / n, 2)} (n {n}"
            wrong = counts[a].copy()
            wrong[a] = 0
            if wrong.any():
                b = int(wrong.argmax())
                cell += f"; {_fmt(wrong[b] / n, 2)} {PATTERN_NAMES[b]}"
            cells.append(cell + ")")
        if cells:
            print(f"pattern by pattern asked ({set_name}; else mostly): " + ", ".join(cells))


def judging_note(gcfg: Config, feat_size: int) -> str:
    """Which size judges what: the line printed above the table."""
    size = gcfg.image_size
    resize = ("kept at that size" if size == feat_size else
              "area-downscaled" if size > feat_size else "bicubic-upscaled")
    note = (f"judged at {feat_size} px by the garment feature net trained on the real training "
            f"photos at {feat_size} px: real photos from the {feat_size} px cache, generated "
            f"{size} px images {resize}")
    if gcfg.stage == 2:
        note += (f", Stage-I drafts ({gcfg.stage1_size} px) bicubic-upscaled to {size} px, "
                 f"then {resize} like them")
    return note


def print_table(m: dict):
    k = m["k"]
    drafts = "kind_acc_drafts" in m
    print(f"{'':17}{'kind acc':>10}{'colour acc':>12}{'pattern acc':>13}{'FD-garment':>12}"
          f"{'floor':>9}{f'R-prec@{k}':>11}{'copies':>9}")
    lines = [("real held-out", "real", None, m["fd_garment_floor"], m["r_precision_real"],
              m["copies_real"]),
             ("generated", "generated", m["fd_garment"], m["fd_garment_floor"],
              m["r_precision_generated"], m["copies_generated"])]
    if drafts:
        lines.append(("drafts upscaled", "drafts", m["fd_garment_drafts"], m["fd_garment_floor"],
                      m["r_precision_drafts"], m["copies_drafts"]))
    lines.append(("short prompts", "short", None, None, None, None))
    lines.append(("Russian prompts", "russian", None, None, None, None))
    for label, s, fd, floor, rp, cp in lines:
        print(f"{label:17}{_fmt(m[f'kind_acc_{s}']):>10}{_fmt(m[f'colour_acc_{s}']):>12}"
              f"{_fmt(m[f'pattern_acc_{s}']):>13}{_fmt(fd, 2):>12}{_fmt(floor, 2):>9}"
              f"{_fmt(rp):>11}{_fmt(cp):>9}")
    sets = [("real", "real"), ("generated", "gen")] + ([("drafts", "draft")] if drafts else []) \
        + [("short", "short"), ("russian", "ru")]
    width = 7 * len(sets)
    print(f"\n{'':10}" + "".join(f"{attr + ' acc':>{width}}" for attr in ATTRS)
          + f"{'n real':>8}{'n gen':>7}")
    print(f"{'kind':10}" + "".join(f"{short:>7}" for _, short in sets) * len(ATTRS))
    for name, v in m["per_kind"].items():
        cells = "".join(f"{_fmt(v[f'{attr}_{s}']):>7}" for attr in ATTRS for s, _ in sets)
        print(f"{name:10}{cells}{v['n_kind_real']:>8}{v['n_kind_generated']:>7}")
    print(f"({m['judged']}; FD-garment: Frechet distance in the garment feature net's space "
          f"between images generated from the captions of held-out half A and the real photos "
          f"of half B ({m['n_fd']} each); floor: the real photos of A vs those of B; "
          f"R-precision: {_fmt(m['candidates_generated'], 1)} candidates per generated image, "
          f"ties count as misses; copies: the share of images nearer to a training photo than "
          f"{COPY_QUANTILE:.0%} of the held-out photos are to theirs (cosine of centred "
          f"feature-net features above {_fmt(m['copy_threshold'], 4)}; about "
          f"{1 - COPY_QUANTILE:.2f} for unseen photos); short prompts: the same samples' short "
          f"captions, e.g. \"a red floral dress\"; Russian prompts: those in Russian, e.g. "
          f"\"красное платье в цветочек\", {_fmt(m['russian_read_back'])} of them read back to "
          f"exactly their kind, colour and pattern)")
    ratio = {a: m[f"{a}_acc_russian"] / m[f"{a}_acc_short"] if m[f"{a}_acc_short"] else
             float("nan") for a in ("kind", "colour")}
    print(f"Russian / English short prompts: kind accuracy {_fmt(ratio['kind'])}, colour "
          f"accuracy {_fmt(ratio['colour'])}")
    if drafts:
        ratio = m["fd_garment"] / m["fd_garment_drafts"] if m["fd_garment_drafts"] else float("nan")
        print(f"Stage II against its own upscaled drafts: FD-garment {_fmt(m['fd_garment'], 2)} vs "
              f"{_fmt(m['fd_garment_drafts'], 2)} ({_fmt(ratio, 2)}x; floor "
              f"{_fmt(m['fd_garment_floor'], 2)}), kind {_fmt(m['kind_acc_generated'])} vs "
              f"{_fmt(m['kind_acc_drafts'])}, colour {_fmt(m['colour_acc_generated'])} vs "
              f"{_fmt(m['colour_acc_drafts'])}, pattern {_fmt(m['pattern_acc_generated'])} vs "
              f"{_fmt(m['pattern_acc_drafts'])}")
        change = m["draft_change"]
        print(f"Stage II moves its images {_fmt(change, 4)} from their upscaled drafts (mean absolute "
              f"pixel difference, 0-1 scale)" + (
                  f": below {DRAFT_CHANGE_MIN}, it returns its drafts nearly unchanged and adds "
                  f"nothing to them" if change < DRAFT_CHANGE_MIN else ""))
    print(f"variety: {_fmt(m['variety_generated'])} between {VARIETY_DRAWS} images of one held-out "
          f"caption, {_fmt(m['variety_real'])} between real held-out photos of one kind, colour "
          f"and pattern (mean RMS pixel distance at {m['feat_size']} px, 0-1 scale)")


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(description="Evaluate a generator checkpoint against held-out real garments "
                              "with the repo's garment feature net.",
                  formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--net_g", required=True, type=flag_type(TEXT),
                   help="generator checkpoint (Stage I or II)")
    p.add_argument("--data_dir", default=None, type=flag_type(PATH),
                   help="DFMM folder or class folders (as main.py); omitted: the built-in "
                        "synthetic garments")
    p.add_argument("--n_per_kind", type=flag_type(whole(1, 100_000)), default=100,
                   help="generated images per kind")
    p.add_argument("--k", type=flag_type(whole(2, 1000)), default=10,
                   help="candidate captions per image for R-precision")
    p.add_argument("--out_dir", default="output", type=flag_type(TEXT),
                   help="results go to OUT_DIR/eval/")
    p.add_argument("--cache_dir", default=None, type=flag_type(PATH),
                   help="image and feature-net cache (default: DATA_DIR/cache)")
    p.add_argument("--embeddings_path", default=None, type=flag_type(PATH),
                   help="caption embeddings cache (default: DATA_DIR/embeddings.pickle)")
    p.add_argument("--feat_epochs", type=flag_type(whole(1, 10_000)), default=FEAT_EPOCHS,
                   help="training epochs of the feature net (part of its cache key)")
    p.add_argument("--feat_size", type=flag_type(one_of(*FEAT_SIZES, optional=True)),
                   default=None,
                   help="size of the feature net that judges the images (64 or 128; default: "
                        "64 for a Stage-I generator, 128 for a Stage-II one)")
    p.add_argument("--seed", type=flag_type(SEED), default=0,
                   help="caption choice and generator noise")
    p.add_argument("--device", default="auto", type=flag_type(DEVICE),
                   help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--num_threads", type=flag_type(FIELD_RULES["num_threads"]), default=0,
                   help="CPU threads for torch (0: torch's default; 1 is faster on a busy CPU)")
    p.add_argument("--wandb", dest="wandb_mode", choices=("online", "offline", "disabled"),
                   default=None,
                   help="WandB mode (default: WANDB_MODE, else offline unless WANDB_API_KEY is set)")
    return p


def main(argv=None) -> int:
    def job():
        args = build_parser().parse_args(argv)
        cfg = Config(data_dir=args.data_dir, cache_dir=args.cache_dir,
                     embeddings_path=args.embeddings_path, seed=args.seed, device=args.device,
                     num_threads=args.num_threads, out_dir=args.out_dir,
                     wandb_mode=args.wandb_mode).validate()
        evaluate(args.net_g, cfg, n_per_kind=args.n_per_kind, k=args.k,
                 feat_epochs=args.feat_epochs, feat_size=args.feat_size)

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
