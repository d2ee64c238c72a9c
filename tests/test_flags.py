"""Every flag of every script, with generated values: the scripts either stop with one
`error: --flag: ...` line and exit code 2, or reach their work with values inside the
ranges of config.FIELD_RULES. The work itself is replaced by a stub, so no case trains,
reads data or writes files."""
import argparse
import math
import re

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import bench
import datasets
import evaluate
import get_embeddings
import main
import synthetic
from config import BUILTIN_PRESET, FIELD_RULES, Config
from utils import run_cli


class Reached(Exception):
    """Raised by the stubbed work function: validation let the values through."""

    def __init__(self, *args, **kwargs):
        super().__init__("reached")
        self.args_, self.kwargs = args, kwargs


def stub(*args, **kwargs):
    raise Reached(*args, **kwargs)


# script -> (parser, run(argv) -> exit code, the work functions replaced by the stub,
#            flags every call needs)
SCRIPTS = {
    "main": (main.build_parser, main.main,
             [(main, "train"), (main, "generate"), (main, "export_generator")], []),
    "datasets": (datasets.build_parser, datasets.main, [(datasets, "prepare")],
                 ["--data_dir=d"]),
    "get_embeddings": (get_embeddings.build_parser, get_embeddings.main,
                       [(datasets, "read_captions")], ["--data_dir=d"]),
    "evaluate": (evaluate.build_parser, evaluate.main, [(evaluate, "evaluate")], ["--net_g=g.pt"]),
    "bench": (bench.build_parser, lambda argv: run_cli(lambda: bench.main(argv)),
              [(bench, "resolve_device")], []),
    "synthetic": (synthetic.build_parser, synthetic._main, [(synthetic, "make_synthetic")],
                  ["--out=o"]),
}


def value_options(script):
    """(script, flag) for every option of the script's parser that takes a value."""
    parser = SCRIPTS[script][0]()
    return [(script, a.option_strings[-1]) for a in parser._actions
            if a.option_strings and a.nargs != 0 and not isinstance(a, argparse._HelpAction)]


ALL_FLAGS = [case for script in SCRIPTS for case in value_options(script)]
FLAG_IDS = [f"{s}{f}" for s, f in ALL_FLAGS]

SPECIAL = ["0", "-1", "1", "2", "3", "7", "8", "48", "64", "1024", "4097", "2147483648",
           "1e309", "nan", "-nan", "inf", "-inf", "0.5", "1.0", "-0.0", "1e-320", "", " ", "y",
           "n", "auto", "cpu", "cuda", "cuda:0", "cuda:x", "mps", "banana", "1,2", "2,1", ",",
           "bce", "hinge", "sn", "text", "mu", "input", "affine", "color,cutout", "rotate",
           "a/b", "x" * 5000, "\x00", "\udcff\udcfe", "1_000", "0x10", "١٢"]
values = st.one_of(st.sampled_from(SPECIAL),
                   st.integers(-2 ** 70, 2 ** 70).map(str),
                   st.floats(allow_nan=True, allow_infinity=True).map(repr),
                   st.text(max_size=12),
                   st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3))


def edges(script, flag):
    """Values at and just beyond the edges of what the flag's parser takes: its bounds,
    its choices, and non-finite numbers."""
    action = next(a for a in SCRIPTS[script][0]()._actions if flag in a.option_strings)
    rule = getattr(action.type, "rule", None)
    out = [str(c) for c in action.choices or ()]
    if rule is not None:
        out += [str(c) for c in rule.choices or ()]
        for bound in (rule.lo, rule.hi):
            if bound is not None:
                out += [str(bound), str(bound - 1), str(bound + 1), repr(bound - 1e-9),
                        repr(float(bound))]
    return st.sampled_from(out + ["nan", "inf", "-1", "0"])


def flag_values(script, flag):
    edge = edges(script, flag)
    return st.one_of(edge, edge, edge, values)


def run_script(script, argv, monkeypatch, capsys):
    """(exit code or the Reached stub, stderr) of the script's main on argv."""
    _, run, work, _ = SCRIPTS[script]
    for module, name in work:
        monkeypatch.setattr(module, name, stub)
    try:
        rc = run(argv)
    except Reached as r:
        return r, capsys.readouterr().err
    return rc, capsys.readouterr().err


def assert_sane(cfg: Config):
    """Independent of the rules: what every script may rely on once validation passed."""
    for name, value in vars(cfg).items():
        if isinstance(value, float):
            assert math.isfinite(value) and value >= 0, (name, value)
        elif isinstance(value, int) and not isinstance(value, bool):
            assert value >= 0, (name, value)
    for size in (cfg.stage1_size, cfg.stage2_size):
        assert size >= 8 and size & (size - 1) == 0
    assert cfg.stage2_size > cfg.stage1_size and cfg.batch_size >= 2
    assert re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", cfg.device)
    assert cfg.seed < 2 ** 32


def check_outcome(script, result, err, argv):
    if isinstance(result, Reached):
        for v in list(result.args_) + list(result.kwargs.values()):
            if isinstance(v, Config):
                assert_sane(v)
        args = SCRIPTS[script][0]().parse_args(argv)  # what the work was handed
        for name, v in vars(args).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                assert math.isfinite(v) and v >= 0, (name, v)
            if isinstance(v, str):
                assert "\x00" not in v, (name, v)
        return "reached"
    assert result == 2, (argv, result, err)
    lines = err.strip("\n").split("\n")
    assert lines[-1].startswith("error: ") and "Traceback" not in err, (argv, err)
    assert len(lines[-1]) < 400
    return "refused"


SETTINGS = settings(max_examples=10, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


@pytest.mark.parametrize("script,flag", ALL_FLAGS, ids=FLAG_IDS)
@SETTINGS
@given(data=st.data())
def test_every_flag_with_any_value(script, flag, data, monkeypatch, capsys):
    argv = SCRIPTS[script][3] + [f"{flag}={data.draw(flag_values(script, flag))}"]
    event(check_outcome(script, *run_script(script, argv, monkeypatch, capsys), argv))


@pytest.mark.parametrize("script", list(SCRIPTS))
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_any_mix_of_flags(script, data, monkeypatch, capsys):
    """Several flags at once (relations such as stage2_size > stage1_size), flags given
    twice, bare flags and stray words."""
    options = value_options(script)
    picked = data.draw(st.lists(st.sampled_from(options), min_size=1, max_size=5))
    argv = list(SCRIPTS[script][3])
    for _, flag in picked:
        argv.append(f"{flag}={data.draw(flag_values(script, flag))}")
    if data.draw(st.booleans()):
        argv.append(data.draw(st.sampled_from(["--nope", "stray", picked[0][1], "--debug"])))
    event(check_outcome(script, *run_script(script, argv, monkeypatch, capsys), argv))


@pytest.mark.parametrize("script,argv,msg", [
    ("main", ["--lr_g", "nan"], "--lr_g: must be a finite number, got nan"),
    ("main", ["--max_samples", "-1"], "--max_samples: must be at least 0, got -1"),
    ("main", ["--num_threads", "-1"], "--num_threads: must be from 0 to 1024, got -1"),
    ("main", ["--seed", "-1"], "--seed: must be from 0 to 4294967295, got -1"),
    ("main", ["--stage1_size", "48"], "--stage1_size: must be a power of two from 8 to 1024"),
    ("main", ["--stage1_size", "64", "--stage2_size", "64"], "--stage2_size: must be larger"),
    ("main", ["--device", "banana"], "--device: expected auto, cpu, cuda, cuda:N or mps"),
    ("main", ["--crop_margin", "-2"], "--crop_margin: must be in [0, 10], got -2"),
    ("main", ["--ema_decay", "1"], "--ema_decay: must be in [0, 1), got 1"),
    ("main", ["--channels_last", "maybe"], "--channels_last: expected y or n"),
    ("datasets", ["--data_dir", "d", "--size", "0"], "--size: must be a power of two"),
    ("get_embeddings", ["--data_dir", "d", "--batch_size", "0"], "--batch_size: must be from 1"),
    ("evaluate", ["--net_g", "g.pt", "--k", "1"], "--k: must be from 2"),
    ("evaluate", ["--net_g", "g.pt", "--device", "cuda:x"], "--device: expected"),
    ("evaluate", ["--net_g", "g.pt", "--feat_size", "256"],
     "--feat_size: expected one of 64, 128, got 256"),
    ("bench", ["--stages", "3"], "--stages: expected 1, 2, 1,2 or nothing, got 3"),
    ("synthetic", ["--out", "o", "--workers", "0"], "--workers: must be from 1 to 256"),
])
def test_named_bad_values(script, argv, msg, monkeypatch, capsys):
    result, err = run_script(script, argv, monkeypatch, capsys)
    assert result == 2 and err == f"error: {msg}" + err[len(msg) + 7:] and err.count("\n") == 1


def test_every_config_field_has_a_rule_and_a_flag():
    import dataclasses
    fields = {f.name for f in dataclasses.fields(Config)}
    assert fields == set(FIELD_RULES)
    flags = {a.dest for a in main.build_parser()._actions}
    assert fields - flags == {"category_map", "parsing_labels"}  # mappings: not flags
    Config().validate()
    for preset in (main.DEBUG, BUILTIN_PRESET):
        Config(**preset).validate()


def test_presets_are_named_and_the_default_follows_data_dir():
    def settle(*argv):
        args = main.build_parser().parse_args(list(argv))
        return main.make_config(args)[0], main.describe_preset(args)

    builtin, said = settle("--train", "y")
    assert builtin == Config(**BUILTIN_PRESET) and said.startswith("preset builtin (no --data_dir)")
    paper, said = settle("--train", "y", "--data_dir", "d")
    assert paper == Config(data_dir="d") and said.startswith("preset stackgan (--data_dir)")
    assert builtin.ms_coef == 0.2 and paper.ms_coef == 0  # mode seeking: the built-in data's
    assert settle("--preset", "stackgan")[0] == Config()
    assert settle("--preset", "builtin", "--data_dir", "d")[0] == Config(data_dir="d",
                                                                         **BUILTIN_PRESET)
    assert settle("--gf_dim", "64")[0].gf_dim == 64  # a flag still overrides the preset

def test_checkpoint_settings_go_through_the_same_rules(tmp_path, capsys):
    import torch
    from utils import load_checkpoint
    cfg = Config(gf_dim=4).to_dict()
    for bad in ({"lr_g": float("nan")}, {"stage1_size": 48}, {"device": "banana"},
                {"batch_size": "8"}):
        path = tmp_path / "c.pt"
        torch.save({"netG": {}, "config": {**cfg, **bad}}, path)
        with pytest.raises(Exception) as e:
            load_checkpoint(path)
        assert type(e.value).__name__ == "UserError" and "does not hold usable settings" in str(e.value)
        assert f"--{next(iter(bad))}" in str(e.value)
