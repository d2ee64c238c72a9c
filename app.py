"""The web page for designers: describe garments in words, get images from the trained generator.

    python app.py                                # http://127.0.0.1:7860, newest checkpoint
    python app.py --net_g output/stage2/last.pt --port 8080
    python app.py --host 0.0.0.0                 # also reachable from other machines

A local Gradio page: no share link, no usage statistics, nothing fetched from the
network. It draws with the generation path of `main.py --train n` (sample.Drawer), loaded
once at start-up with its text encoder: OUT_DIR/stage2/last.pt when Stage II has been
trained, else OUT_DIR/stage1/last.pt, or --net_g. The images of every request and a zip
of them are written to OUT_DIR/app/<time>/ (the newest 200 requests are kept).
Descriptions may be Russian: the page says what each was drawn as, names the words
the model's training captions never had, and lists the kinds, colours, patterns and
fabrics the model knows.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import threading
import time
import traceback
import zipfile
from datetime import datetime
from pathlib import Path

from PIL import Image

from captions import KIND_NOUN, RUSSIAN_PATTERNS, known_names, russian_name
from sample import TRAIN_STAGE1, Drawer, find_checkpoint, read_prompt, slug
from utils import (UserError, _atomic_write, check_writable_dir, first_line, resolve_device,
                   run_cli, to_uint8, writing)

# read by gradio and the model hub's client when first imported (gradio in build_page,
# the hub's client with the text encoder): no usage statistics, no look-ups on the hub
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

MAX_PROMPTS = 10         # descriptions per click
MAX_PER_PROMPT = 8       # images per description
DEFAULT_PER_PROMPT = 4
MAX_PROMPT_CHARS = 2000  # the encoder reads 256 word pieces (about 1,000 characters): cut before
KEEP_REQUESTS = 200      # request folders kept in OUT_DIR/app
TRAIN_STAGE2 = "python main.py --train y --stage 2 --stage1_g output/stage1/last.pt"
EXAMPLES = [  # every kind, short as typed and in the sentences of the DFMM captions
    "a red floral dress",
    "a white T-shirt with striped patterns",
    "a pair of navy pants",
    "a pair of black leggings",
    "a pair of white shoes",
    "The lady wears a short dress. The dress is black. It has pure color patterns.",
    "a pink T-shirt\na blue floral dress\na pair of beige plaid pants\n"
    "a pair of purple leggings\na pair of brown shoes",
    "красное платье в цветочек\nпара тёмно-синих джинсов",
]


@dataclasses.dataclass
class Result:
    """What one click gives back: a message, and on success the images (PNG files, one
    caption each), their zip and the time taken."""
    message: str
    images: list = dataclasses.field(default_factory=list)
    captions: list = dataclasses.field(default_factory=list)
    zip_path: Path | None = None
    seconds: dict = dataclasses.field(default_factory=dict)  # total, draw, png
    size: int | None = None


# ------------------------------------------------------------------ request handling

def read_prompts(text) -> tuple[list[str], list[str]]:
    """The prompt box -> (prompts, notes): one prompt per non-empty line, whitespace
    collapsed, each cut to MAX_PROMPT_CHARS."""
    lines = [" ".join(line.split()) for line in str(text or "").splitlines()]
    prompts = [line for line in lines if line]
    if not prompts:
        raise UserError('the description is empty: type a garment, e.g. "a red floral dress" '
                        "(one per line)")
    if len(prompts) > MAX_PROMPTS:
        raise UserError(f"{len(prompts)} descriptions: at most {MAX_PROMPTS} at a time")
    notes = [f"Description {i + 1} is {len(p):,} characters long; only its start is read."
             for i, p in enumerate(prompts) if len(p) > MAX_PROMPT_CHARS]
    return [p[:MAX_PROMPT_CHARS] for p in prompts], notes


def whole_number(value, what: str, lo: int, hi: int) -> int:
    """`value` (a number field's, so possibly a float, None or text) as an int in [lo, hi]."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = None
    if v is None or not lo <= v <= hi or v != round(v):
        raise UserError(f"{what} must be a whole number from {lo} to {hi}"
                        + (f", got {value}" if v is not None else ""))
    return int(v)


def caption(prompt: str, n: int = 90) -> str:
    return prompt if len(prompt) <= n else prompt[:n - 1] + "…"


def write_request(folder: Path, prompts, images, n: int) -> tuple[list[Path], Path]:
    """One PNG per image and a zip of them all in a new `folder`, named after `prompts`
    (the English readings); removed again when they cannot all be written, e.g. on a full
    disk: a one-line WriteError."""
    pix = to_uint8(images)
    files = []
    with writing(folder, "create the folder"):
        folder.mkdir()
    try:
        for i, p in enumerate(prompts):
            for k in range(n):
                path = folder / f"{i + 1:02d}-{k + 1}-{slug(p)}.png"
                _atomic_write(path, lambda f, im=Image.fromarray(pix[i * n + k]):
                              im.save(f, format="PNG", compress_level=1), sync=False)
                files.append(path)
        zip_path = folder / f"garments-{folder.name}.zip"
        _atomic_write(zip_path, lambda f: write_zip(f, files), sync=False)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return files, zip_path


def write_zip(f, files):
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:  # PNGs are compressed
        for path in files:
            z.write(path, path.name)


def prune(folder: Path, keep: int = KEEP_REQUESTS):
    """Remove all but the newest `keep` request folders."""
    old = sorted(p for p in folder.iterdir() if p.is_dir())[:-keep]
    for p in old:
        shutil.rmtree(p, ignore_errors=True)


class Studio:
    """The page's state and request handler: the generator, loaded once (a missing or
    damaged checkpoint is reported on the page and looked for again at the next
    request), and `handle`, which turns the page's inputs into a Result."""

    def __init__(self, out_dir="output", net_g=None, device="auto", drawer: Drawer | None = None):
        self.out_dir, self.net_g, self.device = Path(out_dir), net_g, device
        self.drawer, self.problem = drawer, None
        self.lock = threading.Lock()  # one request draws at a time
        self.count = 0
        if drawer is None:
            self.load()
        else:
            self.warm_up()

    def load(self):
        path = self.net_g or find_checkpoint(self.out_dir)
        if path is None:
            self.problem = (f"There is no trained generator in `{self.out_dir}/` yet. Train one "
                            f"with `{TRAIN_STAGE1}` (about 9 minutes on a 2-core CPU), then "
                            "click Generate again.")
            return
        try:
            self.drawer = Drawer.load(path, resolve_device(self.device))
        except UserError as e:
            self.problem = f"The generator cannot be loaded: {e}"
            return
        self.problem = None
        self.warm_up()

    def warm_up(self):
        """One small draw per resolution and the Russian dictionaries loaded, so that the
        first click is as fast as the next."""
        for stage in self.drawer.sizes:
            self.drawer.draw(["a red dress"], DEFAULT_PER_PROMPT, 0, stage)
        try:
            read_prompt("красное платье")
        except UserError:  # not installed: said when a Russian description comes
            pass

    @property
    def sizes(self) -> dict[int, int]:
        return self.drawer.sizes if self.drawer is not None else {}

    def describe(self) -> str:
        """One line about the generator in use, or the reason there is none."""
        if self.drawer is None:
            return self.problem or ""
        d = self.drawer
        stage = "Stage II" if d.cfg.stage == 2 else "Stage I"
        if d.path is None or not d.path.exists():
            return f"Generator in memory: {stage}, {d.cfg.image_size} px."
        saved = datetime.fromtimestamp(d.path.stat().st_mtime)
        return (f"Generator `{d.path}`: {stage}, {d.cfg.image_size} px, "
                f"saved {saved:%Y-%m-%d %H:%M}."
                + (f" Note: {d.vocabulary_note}." if d.vocabulary_note else ""))

    def known(self) -> str:
        """The kinds, colours, patterns and fabrics the generator knows (the names its
        training captions use, with their Russian), as Markdown; "" without a generator."""
        if self.drawer is None:
            return ""
        names = known_names(self.drawer.vocabulary)
        roles = {"kinds": "kind", "colours": "colour", "patterns": "pattern", "fabrics": "fabric"}

        def shown(group, name):
            english = KIND_NOUN[name] if group == "kinds" else name
            ru = RUSSIAN_PATTERNS.get(name) if group == "patterns" else \
                russian_name(roles[group], name)
            return f"{english} ({ru})" if ru else english

        lines = [f"- **{group}**: " + (", ".join(shown(group, x) for x in names[group]) or "none")
                 for group in roles]
        source = ("its training captions" if self.drawer.vocabulary is not None
                  else "the repository's vocabulary: this checkpoint does not record its own")
        return (f"**What this generator knows** (from {source}); descriptions in Russian "
                "are translated into these words:\n" + "\n".join(lines))

    def handle(self, text, n=DEFAULT_PER_PROMPT, seed=0, stage=None) -> Result:
        """Descriptions (one per line) -> n images each, written as PNGs and a zip.
        Never raises: problems come back as the Result's message."""
        with self.lock:
            t0 = time.perf_counter()
            try:
                if self.drawer is None:
                    self.load()
                if self.drawer is None:
                    return Result(self.problem)
                return self._draw(text, n, seed, stage, t0)
            except UserError as e:
                return Result(f"Cannot draw: {str(e).rstrip('.')}.")
            except Exception as e:  # a bug, not the user's input: keep serving
                traceback.print_exc()
                return Result(f"Something went wrong ({first_line(e)}); the server's console "
                              "has the details.")

    def _draw(self, text, n, seed, stage, t0) -> Result:
        prompts, notes = read_prompts(text)
        n = whole_number(n, "images per description", 1, MAX_PER_PROMPT)
        seed = whole_number(seed, "the seed", 0, 2**31 - 1)
        stage = max(self.sizes) if stage in (None, "") else stage
        if stage not in self.sizes:
            raise UserError(f"{self.drawer.cfg.image_size} px is the largest size this "
                            "generator draws")
        readings = self.drawer.read(prompts)
        texts = [r.text for r in readings]
        notes += [f"Description {i + 1}: {'; '.join(said)}." for i, r in enumerate(readings)
                  if (said := self.drawer.notes(r))]
        notes += [f"Description {i + 1} is longer than the text encoder reads; only its start "
                  "is used." for i in self.drawer.too_long(texts)
                  if len(prompts[i]) < MAX_PROMPT_CHARS]
        images = self.drawer.draw(prompts, n, seed, stage)
        t1 = time.perf_counter()
        app_dir = check_writable_dir(self.out_dir / "app")
        self.count += 1
        folder = app_dir / f"{datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}-{self.count:04d}"
        files, zip_path = write_request(folder, texts, images, n)
        prune(app_dir)
        t2 = time.perf_counter()
        seconds = {"total": t2 - t0, "draw": t1 - t0, "png": t2 - t1}
        size = images.shape[-1]
        message = (f"{len(files)} images of {size} px in {seconds['total']:.2f} s (text and "
                   f"drawing {seconds['draw']:.2f} s, PNG and zip {seconds['png']:.2f} s), "
                   f"seed {seed}.")
        shown = [f"{r.prompt} → {r.text}" if r.translated else r.prompt for r in readings]
        return Result(" ".join([message] + notes), files,
                      [caption(p) for p in shown for _ in range(n)], zip_path, seconds, size)


def time_request(studio: Studio, prompt: str = "a red floral dress", n: int = 8, seed: int = 0,
                 stage=None, repeats: int = 5) -> dict:
    """Seconds of the request handler (text encoding, drawing, PNG and zip writing) for
    n images of one prompt: the median of `repeats` clicks, the first one included."""
    runs = []
    for r in range(repeats):
        res = studio.handle(prompt, n, seed + r, stage)
        if not res.images:
            raise UserError(res.message)
        runs.append(res.seconds)
    pick = sorted(range(repeats), key=lambda i: runs[i]["total"])[repeats // 2]  # the median
    return {"n_images": len(res.images), "size": res.size, "total_s": runs[pick]["total"],
            "draw_s": runs[pick]["draw"], "png_s": runs[pick]["png"],
            "runs_total_s": [r["total"] for r in runs]}


# ------------------------------------------------------------------------- the page

def resolution_choices(sizes: dict) -> list[tuple[str, int]]:
    names = {2: "Stage II", 1: "Stage I draft"}
    return [(f"{size} px · {names[stage]}", stage) for stage, size in sorted(sizes.items(),
                                                                            reverse=True)]


def import_gradio():
    try:
        import gradio
    except ImportError:
        raise UserError("the page needs gradio: pip install -r requirements.txt") from None
    return gradio


def build_page(studio: Studio):
    """The Gradio page; requests are queued and drawn one at a time."""
    gr = import_gradio()

    def resolution():
        choices = resolution_choices(studio.sizes)
        info = None if 2 in studio.sizes else ("256 px needs a Stage-II generator: "
                                               f"{TRAIN_STAGE2}")
        return gr.Radio(choices=choices, value=choices[0][1] if choices else None, info=info,
                        label="Resolution", elem_id="resolution")

    def page_state():  # at every page load: a checkpoint trained since start-up is found
        if studio.drawer is None:
            with studio.lock:
                studio.load()
        return studio.describe(), resolution(), studio.known()

    def respond(text, n, seed, stage):
        r = studio.handle(text, n, seed, stage)
        gallery = [(str(p), c) for p, c in zip(r.images, r.captions)]
        download = gr.DownloadButton(value=str(r.zip_path) if r.zip_path else None,
                                     visible=r.zip_path is not None)
        return gallery, r.message, download

    with gr.Blocks(title="Fashion StackGAN", analytics_enabled=False,
                   delete_cache=(3600, 86400)) as page:
        gr.Markdown("# Fashion StackGAN\nDescribe garments in your own words, in English or "
                    "Russian, one per line: a t-shirt, dress, pants, leggings or shoes, with a "
                    "colour and a pattern.")
        model_info = gr.Markdown(elem_id="model")
        with gr.Row():
            with gr.Column(scale=2):
                prompts = gr.Textbox(label="Descriptions (one per line)", lines=5,
                                     placeholder="a red floral dress", elem_id="prompts")
                generate = gr.Button("Generate", variant="primary", elem_id="generate")
                n = gr.Slider(1, MAX_PER_PROMPT, value=DEFAULT_PER_PROMPT, step=1,
                              label="Images per description", elem_id="n")
                seed = gr.Number(value=0, precision=0, minimum=0, label="Seed (the same seed "
                                 "draws the same images)", elem_id="seed")
                res = resolution()
                gr.Examples([[e] for e in EXAMPLES], inputs=prompts,
                            examples_per_page=len(EXAMPLES),
                            label="Examples: click one to fill the box")
                known = gr.Markdown(elem_id="known")
            with gr.Column(scale=3):
                status = gr.Markdown(elem_id="status")
                gallery = gr.Gallery(label="Garments", format="png", columns=4, height="fit-content",
                                     object_fit="contain", interactive=False,
                                     buttons=["download", "fullscreen"], elem_id="gallery")
                download = gr.DownloadButton("Download all (zip)", visible=False,
                                             elem_id="download")
        page.load(page_state, outputs=[model_info, res, known])
        generate.click(respond, inputs=[prompts, n, seed, res],
                       outputs=[gallery, status, download], concurrency_limit=1)
    page.queue(default_concurrency_limit=1, max_size=64)
    return page


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="A local web page that draws garments from text.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to serve on (0.0.0.0: every network interface)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--net_g", default=None, help="generator checkpoint (default: "
                   "OUT_DIR/stage2/last.pt, else OUT_DIR/stage1/last.pt)")
    p.add_argument("--out_dir", default="output",
                   help="where checkpoints are looked for; requests are written to OUT_DIR/app")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def serve():
        import_gradio()  # before the model is loaded: a missing install fails at once
        app_dir = check_writable_dir(Path(args.out_dir) / "app")
        studio = Studio(args.out_dir, args.net_g, args.device)
        print(studio.describe(), flush=True)
        page = build_page(studio)
        try:
            page.launch(server_name=args.host, server_port=args.port, share=False, quiet=True,
                        ssr_mode=False, allowed_paths=[str(app_dir.resolve())],
                        footer_links=["gradio"], mcp_server=False, pwa=False,
                        prevent_thread_lock=True)
        except OSError as e:
            raise UserError(f"cannot serve on {args.host}:{args.port}: {first_line(e)} "
                            "(another --port?)") from None
        print(f"open http://{args.host}:{args.port} in a browser (Ctrl-C stops the server)",
              flush=True)
        page.block_thread()

    return run_cli(serve)


if __name__ == "__main__":
    sys.exit(main())
