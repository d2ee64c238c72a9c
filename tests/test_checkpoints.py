"""Checkpoints from anywhere: arbitrary bytes, flipped bytes, entries removed or
replaced, code-running pickles. Loading answers with a one-line UserError or the very
state that was saved; nothing runs code, and a refused file never costs the good
last.pt of a run."""
import io
import pickle
import zipfile

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import get_embeddings
import main
import sample
from conftest import tiny_args, write_dfmm
from utils import UserError, checksums, load_checkpoint, save_checkpoint

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


class Run:
    """A tiny training run's data dir, out dir and the bytes of its last.pt."""

    def __init__(self, data, out):
        self.data, self.out = data, out
        self.good = (out / "stage1" / "last.pt").read_bytes()

    def __iter__(self):
        return iter((self.data, self.out, self.good))

    def __repr__(self):  # hypothesis prints the arguments of a failing example
        return f"Run({self.out})"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny Stage-I run stopped after one step."""
    root = tmp_path_factory.mktemp("ckpt")
    write_dfmm(root / "data", per_category=1)
    assert main.main(["--train", "y", "--max_steps", "1"] + tiny_args(root / "data", root / "out")) == 0
    return Run(root / "data", root / "out")


def tensor_spans(blob: bytes):
    """(start, end) byte ranges of the tensor records inside a torch zip checkpoint."""
    spans = []
    with zipfile.ZipFile(io.BytesIO(blob)) as z:
        for info in z.infolist():
            if "/data/" in info.filename and info.file_size:
                start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
                # the local header may carry another extra field than the central one
                local_extra = int.from_bytes(blob[info.header_offset + 28:info.header_offset + 30],
                                             "little")
                start = info.header_offset + 30 + len(info.filename.encode()) + local_extra
                spans.append((start, start + info.file_size))
    return spans


def one_line_error(e: BaseException) -> bool:
    return isinstance(e, UserError) and "\n" not in str(e) and 0 < len(str(e)) < 400


@SETTINGS
@given(blob=st.binary(max_size=300) | st.binary(max_size=40).map(lambda b: b"PK\x03\x04" + b))
def test_arbitrary_bytes_are_refused(tmp_path, blob):
    path = tmp_path / "x.pt"
    path.write_bytes(blob)
    with pytest.raises(UserError) as e:
        load_checkpoint(path)
    assert one_line_error(e.value)


@SETTINGS
@given(data=st.data())
def test_flipped_bytes_are_refused_or_change_nothing(trained, tmp_path, data):
    """Any flipped bytes anywhere: refused with one line, or (a byte the zip reader
    ignores) the loaded state is exactly the saved one."""
    _, out, good = trained
    original = checksums(load_checkpoint(out / "stage1" / "last.pt"))
    blob = bytearray(good)
    for pos in data.draw(st.lists(st.integers(0, len(blob) - 1), min_size=1, max_size=3)):
        blob[pos] ^= data.draw(st.integers(1, 255))
    path = tmp_path / "flipped.pt"
    path.write_bytes(bytes(blob))
    try:
        state = load_checkpoint(path)
    except UserError as e:
        assert one_line_error(e)
        event("refused")
        return
    event("loaded, unchanged")
    assert checksums(state) == original


@SETTINGS
@given(data=st.data())
def test_flips_inside_weights_say_damaged_checkpoint(trained, tmp_path, data):
    _, _, good = trained
    spans = tensor_spans(good)
    start, end = data.draw(st.sampled_from(spans))
    blob = bytearray(good)
    blob[data.draw(st.integers(start, end - 1))] ^= data.draw(st.integers(1, 255))
    path = tmp_path / "flipped.pt"
    path.write_bytes(bytes(blob))
    with pytest.raises(UserError, match="^damaged checkpoint: "):
        load_checkpoint(path)


plain_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
    | st.builds(torch.zeros, st.integers(0, 3)),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
    max_leaves=6)


@SETTINGS
@given(data=st.data())
def test_entries_removed_or_replaced(trained, tmp_path, data):
    """A checkpoint whose entries are missing or hold other things, saved with or without
    checksums: generation answers with one line or draws from a state that fits."""
    _, out, _ = trained
    state = load_checkpoint(out / "stage1" / "last.pt")
    keys = sorted(state)
    for key in data.draw(st.lists(st.sampled_from(keys), max_size=3, unique=True)):
        if data.draw(st.booleans()):
            del state[key]
        else:
            state[key] = data.draw(plain_values)
    if data.draw(st.booleans()) and isinstance(state.get("config"), dict) and state["config"]:
        name = data.draw(st.sampled_from(sorted(state["config"])))
        state["config"] = {**state["config"], name: data.draw(plain_values)}
    path = tmp_path / "edited.pt"
    if data.draw(st.booleans()):
        save_checkpoint(state, path)
    else:
        torch.save(state, path)
    try:
        sample.load_generator(path, "cpu")
        event("loaded")
    except UserError as e:
        assert one_line_error(e)
        event("refused")


def test_checkpoint_without_config_or_state_dict(trained, tmp_path):
    _, out, _ = trained
    state = load_checkpoint(out / "stage1" / "last.pt")
    for change, msg in [({"config": None}, "'config' entry is not a config"),
                        ({"netG": [1, 2]}, "'netG' entry is not a state dict"),
                        ({"netG_ema": torch.zeros(3)}, "'netG_ema' entry is not a state dict")]:
        path = tmp_path / "c.pt"
        save_checkpoint({**state, **change}, path)
        with pytest.raises(UserError, match=msg):
            load_checkpoint(path)
    without = {k: v for k, v in state.items() if k != "config"}
    save_checkpoint(without, tmp_path / "c.pt")
    with pytest.raises(UserError, match="lacks the entries config"):
        load_checkpoint(tmp_path / "c.pt")


def test_old_checkpoint_without_checksum_loads_with_a_note(trained, tmp_path, capsys):
    _, out, _ = trained
    state = load_checkpoint(out / "stage1" / "last.pt")
    capsys.readouterr()
    torch.save(state, tmp_path / "old.pt")  # as saved before checksums were recorded
    loaded = load_checkpoint(tmp_path / "old.pt")
    assert "records no checksum" in capsys.readouterr().out
    assert checksums(loaded) == checksums(state)
    torch.save({**state, "surprise": 1}, tmp_path / "odd.pt")
    with pytest.raises(UserError, match="unknown entries: surprise"):
        load_checkpoint(tmp_path / "odd.pt")


@pytest.mark.parametrize("how", ["resume auto", "resume path", "stage1_g", "net_g"])
@settings(max_examples=4, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_a_damaged_checkpoint_never_costs_the_good_one(trained, tmp_path, how, data, capsys):
    """Damage inside the weights: every command refuses before writing anything, and the
    run's good last.pt keeps its bytes."""
    root, _, good = trained
    out = tmp_path / "out"
    last = out / "stage1" / "last.pt"
    last.parent.mkdir(parents=True, exist_ok=True)
    last.write_bytes(good)
    start, end = data.draw(st.sampled_from(tensor_spans(good)))
    blob = bytearray(good)
    blob[data.draw(st.integers(start, end - 1))] ^= 0xFF
    damaged = last if how == "resume auto" else tmp_path / "damaged.pt"
    if how == "resume auto":
        good_copy = tmp_path / "kept.pt"
        good_copy.write_bytes(good)
    damaged.write_bytes(bytes(blob))
    before = last.read_bytes()
    argv = {"resume auto": ["--train", "y", "--resume", "auto"],
            "resume path": ["--train", "y", "--resume", str(damaged)],
            "stage1_g": ["--train", "y", "--stage", "2", "--stage1_g", str(damaged)],
            "net_g": ["--train", "n", "--net_g", str(damaged), "--prompt", "a red dress"]}[how]
    rc = main.main(argv + tiny_args(root, out))
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: damaged checkpoint: ") and err.count("\n") == 1
    assert last.read_bytes() == before
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == ["last.pt"]


class RunsCode:
    """Unpickling this object creates the file `marker` (if anything unpickled it)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("where", ["top", "netG", "config", "inside a tensor list"])
def test_code_running_pickles_are_refused(tmp_path, where, capsys):
    marker = tmp_path / "ran"
    evil = RunsCode(marker)
    state = {"netG": {"w": torch.zeros(1)}, "config": {}}
    if where == "top":
        state = evil
    elif where == "inside a tensor list":
        state["netG"] = {"w": [torch.zeros(1), evil]}
    else:
        state[where] = evil
    path = tmp_path / "evil.pt"
    torch.save(state, path)
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_checkpoint(path)
    emb = tmp_path / "embeddings.pickle"
    emb.write_bytes(pickle.dumps({"version": 2, "x": evil}))
    with pytest.raises(UserError, match="not a readable embeddings cache"):
        get_embeddings.read_cache(emb)
    assert not marker.exists()
