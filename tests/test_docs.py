"""Docs that cannot drift: every command written in README.md and docs/*.md parses with
its script's own parser, every flag they name exists, and every file they name is there."""
import argparse
import functools
import importlib
import re
import shlex
from pathlib import Path

import pytest

from utils import UserError

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# a value written in capitals (DFMM, PHOTOS, OUT, N, PATH), in <angle brackets> or as an
# ellipsis stands for a value: it is replaced by one the flag accepts
PLACEHOLDER = re.compile(r"^(?:[A-Z][A-Z0-9_]*|<[^>]*>|…|\.\.\.)$")
CANDIDATES = ("1", "2", "64", "0.5", "y", "auto", "x")
TORCHRUN_FLAGS = {"--standalone", "--nproc_per_node", "--nnodes", "--node_rank",
                  "--master_addr", "--master_port"}
SCRIPT = re.compile(r"^\w+\.py$")


def code_texts(markdown: str) -> list[str]:
    """The lines of fenced code blocks (a trailing backslash joins the next line) and
    the inline code spans of the prose (which may wrap across lines)."""
    out, prose, block, pending = [], [], False, ""
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            block = not block
            continue
        if not block:
            prose.append(line)
        elif line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
        else:
            out.append(pending + line)
            pending = ""
    spans = re.findall(r"`([^`]+)`", "\n".join(prose))
    return out + [" ".join(s.split()) for s in spans]


def split_commands(text: str) -> list[list[str]]:
    """The shell words of each command in a code line (split at &&, ;, |), `#` comments
    dropped; [] for a line that is not shell (a layout drawing)."""
    try:
        words = shlex.split(text, comments=True)
    except ValueError:
        return []
    parts, cur = [], []
    for w in words:
        if w in ("&&", "||", ";", "|"):
            parts.append(cur)
            cur = []
        else:
            cur.append(w)
    return [p for p in parts + [cur] if p]


def script_call(words: list[str]):
    """(script stem, its arguments) when the words run one of the repo's scripts:
    `python x.py ...`, `torchrun ... x.py ...`, or `x.py --flag ...`; else None."""
    for i, w in enumerate(words):
        if not SCRIPT.match(w):
            continue
        before = words[:i]
        runs = (before and before[-1] in ("python", "python3")) or "torchrun" in before
        if runs or (i == 0 and words[1:2] and words[1].startswith("-")):
            return w[:-3], words[i + 1:]
        return None
    return None


def documented_commands(markdown: str) -> list[tuple[str, list[str], str]]:
    """(script, arguments, the text) of every script command in a markdown text."""
    found = []
    for text in code_texts(markdown):
        for words in split_commands(text):
            call = script_call(words)
            if call:
                found.append((*call, text))
    return found


def _parser(script: str):
    if not (ROOT / f"{script}.py").is_file():
        raise AssertionError(f"{script}.py does not exist")
    module = importlib.import_module(script)
    if not hasattr(module, "build_parser"):
        raise AssertionError(f"{script}.py has no command line (no build_parser)")
    return module.build_parser()


def fill_placeholders(parser, args: list[str]) -> list[str]:
    """args with each placeholder value replaced by one its flag accepts (an ellipsis
    that is not a flag's value is dropped)."""
    out = []
    for i, a in enumerate(args):
        action = parser._option_string_actions.get(args[i - 1]) if i else None
        takes_value = action is not None and action.nargs != 0
        if not PLACEHOLDER.match(a) or not takes_value:
            if a not in ("…", "..."):
                out.append(a)
            continue
        if action.choices:
            out.append(str(next(iter(action.choices))))
            continue
        convert = action.type or str
        for value in (a, *CANDIDATES):
            try:
                convert(value)
            except (ValueError, TypeError, argparse.ArgumentTypeError):
                continue
            out.append(value)
            break
        else:
            out.append(a)
    return out


def command_problem(script: str, args: list[str]) -> str | None:
    """Why `python <script>.py args` would not parse, or None."""
    try:
        parser = _parser(script)
        parser.parse_args(fill_placeholders(parser, args))
    except AssertionError as e:
        return str(e)
    except UserError as e:
        return str(e)
    except SystemExit as e:  # a plain argparse parser; 0 for -h
        return None if e.code == 0 else f"exits {e.code}"
    return None


def command_problems(markdown: str) -> list[str]:
    return [f"`{text}`: {why}" for script, args, text in documented_commands(markdown)
            if (why := command_problem(script, args))]


@functools.lru_cache(maxsize=1)
def known_flags() -> frozenset:
    flags = set(TORCHRUN_FLAGS)
    for path in sorted(ROOT.glob("*.py")):
        text = path.read_text()
        if "def build_parser" in text:
            flags |= set(_parser(path.stem)._option_string_actions)
    return frozenset(flags)


def flag_problems(markdown: str, flags: set) -> list[str]:
    """Flags named in code (`--ms_coef 0.2`) that no script has."""
    named = {f for text in code_texts(markdown)
             for f in re.findall(r"(?<![\w-])--[a-z][\w-]*", text)}
    return sorted(named - flags)


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(markdown: str) -> set:
    return {slug(m) for m in re.findall(r"^#+\s+(.+)$", markdown, re.M)}


def file_problems(markdown: str, base: Path) -> list[str]:
    """Links (and image links) whose file or heading is missing, and repo files named
    in the text (docs/..., tests/..., .ci/..., scripts, requirements.txt) that do not
    exist."""
    problems = []
    for target in re.findall(r"\]\(([^)\s]+)\)", markdown):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        path = (base / file).resolve() if file else None
        if path is not None and not path.exists():
            problems.append(f"link to a missing file: {target}")
        elif anchor and slug(anchor) not in anchors(path.read_text() if path else markdown):
            problems.append(f"link to a missing heading: {target}")
    named = set(re.findall(r"(?<![\w/.])((?:docs|tests|\.ci)/[\w./-]*[\w/])", markdown))
    named |= set(re.findall(r"(?<![\w/.-])(\w+\.py)\b", markdown))
    named |= set(re.findall(r"(?<![\w/.-])(requirements\.txt)\b", markdown))
    for name in sorted(named):
        if "*" in name:
            continue
        if not any((ROOT / d / name).exists() for d in ("", "tests")):
            problems.append(f"names a missing file: {name}")
    return problems


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_documented_command_parses(doc):
    assert command_problems(doc.read_text()) == []


def test_the_docs_hold_the_commands_of_every_script():
    found = [c for doc in DOCS for c in documented_commands(doc.read_text())]
    scripts = {script for script, _, _ in found}
    assert {"main", "datasets", "get_embeddings", "evaluate", "app", "bench"} <= scripts
    assert len(found) > 40


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_documented_flag_exists(doc):
    assert flag_problems(doc.read_text(), known_flags()) == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_named_file_exists(doc):
    assert file_problems(doc.read_text(), doc.parent) == []


def test_the_checks_fail_on_drift():
    """A misspelt flag, a wrong value, a script that is gone, a broken link: each is
    caught, in a code block (across a line continuation) as in prose."""
    wrong = """
Train:

```bash
python main.py --train y --stage 1 \\
    --data_dir DFMM --stge 1        # the flag is --stage
python datasets.py --data-dir PHOTOS
```

Or `python main.py --train y --stage 3`, then `python train.py --epochs 2`, and
`python evaluate.py --net_g …` ([scores](docs/no_such_file.md), [more](#no-heading)).
"""
    problems = command_problems(wrong)
    assert len(problems) == 4, problems
    assert "--stge" in problems[0] and "--data-dir" in problems[1]
    assert "--stage" in problems[2] and "train.py has no command line" in problems[3]
    assert flag_problems(wrong, known_flags()) == ["--data-dir", "--stge"]
    assert file_problems(wrong, ROOT) == ["link to a missing file: docs/no_such_file.md",
                                          "link to a missing heading: #no-heading",
                                          "names a missing file: docs/no_such_file.md"]
    right = "```\npython main.py --train y --stage 2 --data_dir DFMM --stage1_g PATH --epochs N\n```"
    assert documented_commands(right)[0][:2] == ("main", ["--train", "y", "--stage", "2",
                                                          "--data_dir", "DFMM", "--stage1_g",
                                                          "PATH", "--epochs", "N"])
    assert command_problems(right) == []
