"""The command line: train StackGAN (--train y) or draw garments from text (--train n).

    python main.py --train y --stage 1                    # Stage I on the built-in data
    python main.py --train y --stage 1 --data_dir DFMM    # Stage I on DeepFashion-MultiModal
    python main.py --train y --stage 2 --data_dir DFMM --stage1_g output/stage1/last.pt
    python main.py --train n --prompt "red dress with lace" --prompt "black leggings"
    python main.py --export generator.pt                  # the newest generator, to share

Only the command line lives here: training is train.py, generation sample.py.
Every config.Config field is also a flag (`--gf_dim 64`, `--lr_decay_epoch 10`, ...);
`python main.py -h` lists them all.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from captions import KINDS, sweep_prompts
from config import FIELD_RULES, PRESETS, CliParser, Config, flag_type, preset_values, yes_no
from sample import export_generator, generate, generator_path, read_prompts
from train import train
from utils import human_bytes, run_cli

DEBUG = dict(epochs=1, max_samples=64, batch_size=16, gf_dim=8, df_dim=8, snapshot_interval=1,
             builtin_per_kind=20, builtin_dir="data/synthetic_debug", n_samples=4, log_interval=1)


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(description="Text-to-fashion StackGAN: train or generate.",
                  formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--train", type=yes_no, default=True, help="y: train; n: generate sample grids")
    p.add_argument("--stage", type=int, choices=(1, 2), default=None,
                   help="1: 64px Stage I; 2: 256px Stage II (training default 1; generation: "
                        "the checkpoint's)")
    path = flag_type(FIELD_RULES["data_dir"])  # a file or folder name
    p.add_argument("--data_dir", default=None, type=path,
                   help="DFMM folder (images/ + captions.json) or class folders "
                        "(DIR/<kind>/, DIR/train/<kind>/); omitted: the built-in synthetic garments")
    p.add_argument("--preset", choices=tuple(PRESETS), default=None,
                   help="settings under the flags: builtin (narrower networks, 30 epochs), "
                        "stackgan (config.Config's defaults) or photos (a photo folder on a "
                        "CPU: narrow networks, the small-data discriminator; use with "
                        "--max_minutes); each has its Stage-II values; default: builtin "
                        "without --data_dir, stackgan with it")
    p.add_argument("--stage1_g", default=None, type=path,
                   help="the Stage-I checkpoint Stage II refines (default: "
                        "OUT_DIR/stage1/last.pt)")
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
    p.add_argument("--export", default=None, metavar="OUT.pt", type=path,
                   help="write the EMA generator of --net_g (default: as --train n finds it) "
                        "with its settings and a SHA-256 of its weights to OUT.pt, a small file "
                        "to share that the page, --train n and evaluate.py load; then exit")
    p.add_argument("--debug", action="store_true", help="a tiny run for smoke tests")
    p.add_argument("--wandb", dest="wandb_mode", choices=("online", "offline", "disabled"),
                   default=None,
                   help="WandB mode (default: WANDB_MODE, else offline unless WANDB_API_KEY is set)")
    given = {a.dest for a in p._actions}
    for f in dataclasses.fields(Config):
        if f.name in given or f.type not in ("int", "float", "str", "bool", "Optional[str]"):
            continue
        p.add_argument(f"--{f.name}", type=flag_type(FIELD_RULES[f.name]), default=None,
                       help=f"(config, default {f.default!r})")
    return p


def preset_name(args) -> str:
    """--preset, or the default: builtin without --data_dir, stackgan with it."""
    return args.preset or ("builtin" if args.data_dir is None else "stackgan")


def describe_preset(args) -> str:
    name = preset_name(args)
    values = ", ".join(f"{k} {v}" for k, v in preset_values(name, args.stage or 1).items()) \
        or "config.Config's defaults"
    why = "" if args.preset else " (no --data_dir)" if args.data_dir is None else " (--data_dir)"
    return f"preset {name}{why}: {values}" + ("; then --debug" if args.debug else "")


def make_config(args) -> tuple[Config, set]:
    """Config from defaults <- the preset <- --debug <- explicit flags. Returns it and the
    flags given."""
    names = {f.name for f in dataclasses.fields(Config)}
    explicit = {k: v for k, v in vars(args).items() if k in names and v is not None}
    values = preset_values(preset_name(args), args.stage or 1)
    if args.debug:
        values.update(DEBUG)
    values.update(explicit)
    return Config(**values).validate(), set(explicit)


def export(args, cfg):
    """--export: the generator --train n would draw with, as a file to share."""
    src = generator_path(cfg.out_dir, args.net_g, args.stage)
    dst = export_generator(src, args.export)
    print(f"wrote {dst} ({human_bytes(dst.stat().st_size)}): the generator of {src} (a "
          f"training checkpoint of {human_bytes(Path(src).stat().st_size)}), for --net_g of "
          "main.py --train n, app.py and evaluate.py")


def main(argv=None) -> int:
    def job():
        args = build_parser().parse_args(argv)
        cfg, explicit = make_config(args)
        if args.export:
            export(args, cfg)
        elif args.train:
            print(describe_preset(args))
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
