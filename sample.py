"""Generate garments from text: load a generator checkpoint and draw prompts with it.

`Drawer` is the one generation path: `python main.py --train n`, the designers' page
(app.py), evaluate.py and bench.py all draw through it or through `sample_images`.
A Russian prompt is drawn from its English reading (captions.read_prompt); `Drawer.notes`
says what was drawn and which words the model's training captions never had.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

import captions
from captions import Reading, unseen_words
from config import Config
from get_embeddings import encode_texts, load_text_model, too_long
from model import Stage1_G, Stage2_G
from utils import (UserError, _atomic_write, autocast, check_writable_dir, clean_text,
                   first_line, has_surrogates, load_checkpoint, resolve_device, save_checkpoint,
                   save_grid, to_uint8, use_bf16, weights_sha256)

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


def load_generator(path, device, expect_stage=None):
    """(G in eval mode, its Config, the checkpoint dict) from a checkpoint file."""
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


def export_generator(src, dst) -> Path:
    """Write the generator of the checkpoint `src` to `dst`, to share: its EMA weights
    (a Stage-II G holds its frozen Stage-I G), its settings (config, stage1_config),
    the text model's name, the training-caption vocabulary when `src` records one, and
    the SHA-256 of the weights. load_checkpoint and load_generator read it like a
    checkpoint (the page, `--train n`, evaluate.py, `--stage1_g`); it cannot resume
    training, having no discriminator or optimiser state."""
    src, dst = Path(src), Path(dst)
    _, cfg, state = load_generator(src, "cpu")  # the weights fit the model they describe
    if dst.exists() and dst.resolve() == src.resolve():
        raise UserError(f"--export {dst} would replace the checkpoint it exports; give "
                        "another file name")
    weights = state.get("netG_ema") or state["netG"]
    out = {"netG": weights, "config": state["config"],
           "stage1_config": state.get("stage1_config"), "text_model": cfg.text_model,
           "weights_sha256": weights_sha256(weights),
           "exported_from": {"file": src.name, "epoch": state.get("epoch"),
                             "step": state.get("step")}}
    if state.get("vocabulary") is not None:
        out["vocabulary"] = state["vocabulary"]
    return save_checkpoint(out, dst)


# ------------------------------------------------------------------------ generation

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
                  bf16: bool = False, with_drafts: bool = False):
    """n images per text embedding, (len(emb)*n, 3, S, S) on the CPU; the same seed gives
    the same images (noise and conditioning-augmentation samples are both seeded).
    with_drafts (a Stage-II netG): (images, the Stage-I drafts they were refined from)."""
    device = emb.device
    z = torch.randn(len(emb), n, netG.z_dim, generator=torch.Generator().manual_seed(seed))
    flat_emb, flat_z = emb.repeat_interleave(n, 0), z.flatten(0, 1).to(device)
    images, drafts = [], []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for s in tqdm(range(0, len(flat_z), batch), desc="generating", unit="batch",
                      disable=len(flat_z) <= batch):
            with autocast(device, bf16):
                if with_drafts:
                    img, _, _, low = netG(flat_emb[s:s + batch], flat_z[s:s + batch],
                                          return_stage1=True)
                    drafts.append(low.float().cpu())
                else:
                    img, _, _ = netG(flat_emb[s:s + batch], flat_z[s:s + batch])
            images.append(img.float().cpu())
    return (torch.cat(images), torch.cat(drafts)) if with_drafts else torch.cat(images)


TRAIN_STAGE1 = "python main.py --train y --stage 1"


def find_checkpoint(out_dir, stage=None) -> Path | None:
    """The generator to draw from: OUT_DIR/stage2/last.pt, else OUT_DIR/stage1/last.pt
    (only that stage's when `stage` is given); None when there is none yet."""
    for s in ([stage] if stage else [2, 1]):
        cand = Path(out_dir) / f"stage{s}" / "last.pt"
        if cand.is_file():
            return cand
    return None


def generator_path(out_dir, net_g=None, stage=None) -> Path:
    """--net_g, else find_checkpoint's; an error saying how to train one when there is none."""
    path = net_g or find_checkpoint(out_dir, stage)
    if path is None:
        raise UserError(f"no generator checkpoint found under {out_dir}/stage*/last.pt: "
                        f"train one first ({TRAIN_STAGE1}) or pass --net_g")
    return Path(path)


def read_prompt(prompt: str) -> Reading:
    """captions.read_prompt, with a missing install of the Russian dictionaries as a
    one-line error."""
    try:
        return captions.read_prompt(prompt)
    except captions.MissingAnalyser as e:
        raise UserError(str(e)) from None


class Drawer:
    """A generator and the text encoder of its training captions, both loaded once;
    `draw` turns prompts into images. The generation path of `--train n` and of the web
    page (app.py, timed by `bench.py --app`). `vocabulary`: the words of its training
    captions (the checkpoint's "vocabulary" entry; None for a checkpoint saved before
    it was kept)."""

    def __init__(self, netG, cfg: Config, device, amp: str = "auto", channels_last: bool = True,
                 path=None, vocabulary=None):
        self.device = torch.device(device)
        self.netG, self.cfg, self.path = netG.to(self.device).eval(), cfg, path
        self.vocabulary = frozenset(vocabulary) if vocabulary is not None else None
        self.bf16 = use_bf16(amp, self.device)
        if channels_last:
            self.netG.to(memory_format=torch.channels_last)
        load_text_model(cfg.text_model)  # loaded now, not at the first prompt

    @classmethod
    def load(cls, path, device, stage=None, amp: str = "auto", channels_last: bool = True):
        netG, cfg, state = load_generator(path, device, expect_stage=stage)
        return cls(netG, cfg, device, amp, channels_last, path=Path(path),
                   vocabulary=state.get("vocabulary"))

    def read(self, prompts) -> list[Reading]:
        """Each prompt as the text encoder reads it: English as typed, Russian translated."""
        return [read_prompt(p) for p in prompts]

    def notes(self, reading: Reading) -> list[str]:
        """What a user is told about one prompt: "drawn as: a red dress with lace", the
        Russian words left untranslated, and "not in the training captions: lace (the
        model cannot draw it)" (only when the checkpoint keeps its vocabulary)."""
        out = [f"drawn as: {reading.text}"] if reading.translated else []
        if reading.untranslated:
            out.append("no English for: " + ", ".join(reading.untranslated)
                       + " (kept as written; the text encoder reads English)")
        unseen = unseen_words(reading.text, self.vocabulary) if self.vocabulary else []
        if unseen:
            out.append("not in the training captions: " + ", ".join(unseen)
                       + f" (the model cannot draw {'it' if len(unseen) == 1 else 'them'})")
        return out

    @property
    def vocabulary_note(self) -> str | None:
        """Why words the model never saw are not named, or None when they are."""
        if self.vocabulary is not None:
            return None
        where = f"{self.path} records" if self.path is not None else "this generator has"
        return (f"{where} no vocabulary of its training captions (saved by an earlier "
                "version): words the model never saw are not named")

    @property
    def sizes(self) -> dict[int, int]:
        """{stage: image size} this generator can draw: a Stage-II generator also draws
        its Stage-I drafts."""
        if self.cfg.stage == 2:
            return {2: self.cfg.stage2_size, 1: self.cfg.stage1_size}
        return {1: self.cfg.stage1_size}

    def too_long(self, prompts) -> list[int]:
        """Indices of prompts longer than the text encoder reads."""
        return too_long(prompts, self.cfg.text_model)

    @torch.no_grad()
    def draw(self, prompts, n: int, seed: int, stage=None) -> torch.Tensor:
        """n images per prompt, (len(prompts)*n, 3, S, S) in [-1, 1] on the CPU, prompt
        by prompt; the same seed gives the same images. `stage` 1 draws a Stage-II
        generator's Stage-I drafts (stage1_size)."""
        if stage not in (None, *self.sizes):
            raise UserError(f"this Stage-{self.cfg.stage} generator cannot draw Stage {stage}")
        net = self.netG.stage1 if stage == 1 and self.cfg.stage == 2 else self.netG
        texts = [r.text for r in self.read(prompts)]  # English prompts: the very same strings
        emb = torch.from_numpy(encode_texts(texts, self.cfg.text_model)).to(self.device)
        return sample_images(net, emb, n, seed, bf16=self.bf16)


@torch.no_grad()
def generate(cfg: Config, net_g, prompts, stage=None, name: str = "grid") -> Path:
    """Draw cfg.n_samples images per prompt: OUT_DIR/generated/<name>.png (one row per
    prompt) and one PNG per image; a Russian prompt is drawn (and its files named) from
    its English reading, which is printed with the words the model never saw."""
    device = resolve_device(cfg.device)
    net_g = generator_path(cfg.out_dir, net_g, stage)
    drawer = Drawer.load(net_g, device, stage, cfg.amp, cfg.channels_last)
    out = check_writable_dir(Path(cfg.out_dir) / "generated")
    readings = drawer.read(prompts)
    for i, r in enumerate(readings):
        for note in drawer.notes(r):
            print(f"prompt {i + 1} ({r.prompt[:60]}): {note}")
    if drawer.vocabulary_note:
        print(f"note: {drawer.vocabulary_note}")
    texts = [r.text for r in readings]
    for i in drawer.too_long(texts):
        print(f"note: prompt {i + 1} is longer than the text encoder reads; only its start is used")
    n = cfg.n_samples
    images = drawer.draw(prompts, n, cfg.seed)
    labels = [f"{r.prompt} → {r.text}" if r.translated else r.prompt for r in readings]
    grid = save_grid(images, out / f"{name}.png", nrow=n, row_labels=labels)
    pix = to_uint8(images)
    for i, t in enumerate(texts):
        for k in range(n):
            _atomic_write(out / f"{i:03d}_{slug(t)}_{k}.png",
                          lambda f, im=Image.fromarray(pix[i * n + k]): im.save(f, format="PNG"))
    print(f"wrote {grid} ({len(prompts)} prompts x {n} samples, stage {drawer.cfg.stage}, "
          f"{images.shape[-1]}px) and {len(prompts) * n} single images in {out}")
    return grid
