"""Prompts as a designer types them: Russian read into the English of the training
captions, English left as typed, words the model never saw named, Cyrillic labels drawn."""
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw, ImageFont

import captions
import main
import sample
from captions import (COLOURS, FABRICS, KINDS, PATTERNS, caption_vocabulary, glossary_gaps,
                      read_prompt, russian_prompt, unseen_words)
from get_embeddings import encode_texts
from test_app import write_tiny_checkpoint
from utils import (UserError, label_font_path, load_checkpoint, save_checkpoint, save_grid,
                   to_uint8)

# the words of captions such as the built-in data's: what a checkpoint's vocabulary holds
TRAINING_CAPTIONS = [
    ["The lady wears a long-sleeve T-shirt with striped patterns. The T-shirt is white.",
     "a white striped T-shirt", "white T-shirt with striped patterns"],
    ["The lady wears a short dress. The dress is red. It has floral patterns. It is with "
     "chiffon fabric.", "a red floral dress", "red dress with floral patterns"],
    ["The pants are navy. The pants are with denim fabric.", "a pair of navy pants"],
    ["A pair of black leggings.", "a pair of black leggings"],
    ["This lady wears a pair of ankle boots. The shoes are brown.", "a pair of brown shoes"],
]


# ---------------------------------------------------------------- reading Russian

@pytest.mark.parametrize("prompt,text", [
    ("красное платье", "a red dress"),          # neuter
    ("красная футболка", "a red T-shirt"),      # feminine
    ("красные брюки", "a pair of red pants"),   # plural
    ("пара красных туфель", "a pair of red shoes"),  # genitive plural
    ("КРАСНОЕ Платье", "a red dress"),
    ("зелёный топ", "a green T-shirt"),
    ("зеленый топ", "a green T-shirt"),        # ё written as е
    ("тёмно-синее платье", "a navy dress"),
    ("темно-синие брюки", "a pair of navy pants"),
    ("тёмно синее платье", "a navy dress"),     # the shade as a word of its own
    ("светло-синее платье", "a blue dress"),
    ("Платье синее, длинное", "a long blue dress"),
    ("серая футболка", "a grey T-shirt"),
    ("серые леггинсы", "a pair of grey leggings"),
])
def test_inflected_forms_read_as_the_short_training_captions(prompt, text):
    r = read_prompt(prompt)
    assert r.text == text and r.untranslated == () and r.translated


@pytest.mark.parametrize("words,kind", [
    (["футболка", "футболку", "майка", "майки", "топ", "топик"], "t-shirt"),
    (["платье", "платья", "платьице", "сарафан"], "dress"),
    (["брюки", "брюк", "штаны", "штанов", "джинсы", "джинсов"], "pants"),
    (["леггинсы", "леггинсах", "легинсы", "лосины", "лосинах", "лосин"], "leggings"),
    (["туфли", "туфель", "кроссовки", "кроссовок", "ботинки", "ботинок", "сапоги", "сапог",
      "обувь", "обуви", "кеды", "босоножки"], "shoes"),
])
def test_kind_synonyms_in_any_case_name_the_kind(words, kind):
    for w in words:
        r = read_prompt(f"чёрные {w}" if kind in ("pants", "leggings", "shoes") else w)
        assert r.kind == kind, w
        assert captions.KIND_NOUN[kind] in r.text, (w, r.text)


@pytest.mark.parametrize("prompt,text", [
    ("бордовое платье", "a red dress"),
    ("голубая футболка", "a blue T-shirt"),
    ("бежевые брюки", "a pair of beige pants"),
    ("лиловое платье", "a purple dress"),
    ("платье цвета хаки", "a beige dress"),
    ("тёмно-синие джинсы", "a pair of navy pants with denim fabric"),
    ("платье в цветочек", "a dress with floral patterns"),
    ("белая футболка с цветочным принтом", "a white T-shirt with floral patterns"),
    ("футболка с принтом", "a T-shirt with graphic patterns"),
    ("полосатая футболка", "a T-shirt with striped patterns"),
    ("брюки в клетку", "a pair of pants with lattice patterns"),
    ("платье в горошек", "a dress with dotted patterns"),
    ("однотонное платье", "a dress with pure color patterns"),
    ("шифоновое платье", "a dress with chiffon fabric"),
    ("вязаная кофта", "a sweater with knitted fabric"),
    ("кожаные ботинки", "a pair of shoes with leather fabric"),
    ("красное платье с кружевом", "a red dress with lace"),
    ("футболка с коротким рукавом", "a short-sleeve T-shirt"),
    ("платье без рукавов", "a sleeveless dress"),
    ("платье с круглым вырезом", "a dress with a round neckline"),
    ("платье без кружева", "a dress without lace"),
    ("красно-белое платье в полоску", "a red and white dress with striped patterns"),
    ("синее платье в белый горошек", "a blue dress with white dotted patterns"),
    ("платье белое в горошек", "a white dress with dotted patterns"),
    ("Нарисуй голубое шифоновое платье макси",
     "a long blue dress with chiffon fabric"),
])
def test_synonyms_shades_patterns_fabrics_and_shapes(prompt, text):
    assert read_prompt(prompt).text == text


@pytest.mark.parametrize("prompt,text", [
    ("red платье with lace", "a red dress with lace"),
    ("платье floral", "a dress with floral patterns"),
    ("a pair of чёрных jeans", "a pair of black pants with denim fabric"),
    ("футболка pure color", "a T-shirt with pure color patterns"),
    ("футболка oversize", "a T-shirt oversize"),  # an English word kept as typed
])
def test_mixed_russian_and_english(prompt, text):
    r = read_prompt(prompt)
    assert r.text == text and r.untranslated == ()


def test_a_word_without_english_stays_and_is_reported():
    r = read_prompt("красное платье с воланчиками")
    assert r.text == "a red dress воланчиками" and r.untranslated == ("воланчиками",)
    assert (r.kind, r.colours) == ("dress", ("red",))
    alone = read_prompt("абракадабра")
    assert alone.text == "абракадабра" and alone.untranslated == ("абракадабра",)
    part = read_prompt("красные туфли-лодочки")  # a compound: the parts it knows are read
    assert part.text == "a pair of red shoes лодочки" and part.untranslated == ("лодочки",)


@pytest.mark.parametrize("prompt", [
    "a red floral dress", "red dress with lace",
    "The lady wears a short dress. The dress is black. It has pure color patterns.",
    "  spaces  kept ", "a beige rosé dress with crêpe fabric", "", "12345"])
def test_english_prompts_are_returned_unchanged(prompt):
    r = read_prompt(prompt)
    assert r.text is prompt and not r.translated and r.untranslated == ()


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",), max_codepoint=0x3ff)))
def test_any_text_without_cyrillic_is_the_very_same_string(text):
    assert read_prompt(text).text is text


# ---------------------------------------------------------------- one glossary

def test_the_glossary_names_every_word_of_the_vocabulary_in_russian(monkeypatch):
    assert glossary_gaps() == []
    for name, value in (("COLOURS", {**COLOURS, "teal": [(0, 128, 128)]}),
                        ("PATTERNS", PATTERNS + ("paisley",)),
                        ("FABRICS", FABRICS + ("tulle",)), ("KINDS", KINDS + ("skirt",))):
        with monkeypatch.context() as m:  # a name added without its Russian: named as missing
            m.setattr(captions, name, value)
            assert len(glossary_gaps()) == 1, name
    with monkeypatch.context() as m:  # a Russian colour word removed: its name is missing
        m.setattr(captions, "_GLOSSARY", {k: v for k, v in captions._GLOSSARY.items()
                                          if ("colour", "beige") not in v})
        assert glossary_gaps() == ["colour beige"]


def test_russian_twins_of_every_short_prompt_read_back_exactly():
    """evaluate.py's Russian prompts: every kind, colour and pattern in each phrasing."""
    for kind in KINDS:
        for colour in COLOURS:
            for pattern in (None,) + PATTERNS:
                for variant in range(9):
                    twin = russian_prompt(kind, colour, pattern, variant)
                    r = read_prompt(twin)
                    assert (r.kind, r.colours, r.patterns, r.untranslated) == \
                        (kind, (colour,), (pattern,) if pattern else (), ()), twin
    assert russian_prompt("shoes", "red", "dotted", 2) == "пара красных туфель в горошек"
    assert russian_prompt("dress", "navy", "striped", 1) == "Платье тёмно-синее, в полоску"


def test_a_missing_russian_dictionary_is_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pymorphy3", None)  # as when it is not installed
    captions._analyser.cache_clear()
    captions._russian_meanings.cache_clear()
    try:
        with pytest.raises(UserError, match="pip install -r requirements.txt"):
            sample.read_prompt("красное платье")
        assert sample.read_prompt("a red dress").text == "a red dress"  # English still works
    finally:
        captions._analyser.cache_clear()
        captions._russian_meanings.cache_clear()


# ------------------------------------------------- the words of the training captions

def test_unseen_words_are_those_no_training_caption_has():
    vocab = set(caption_vocabulary(TRAINING_CAPTIONS))
    assert {"long-sleeve", "long", "sleeve", "t-shirt", "chiffon", "navy"} <= vocab
    assert unseen_words("red dress with lace", vocab) == ["lace"]
    assert unseen_words("The lady wears red dresses with a long sleeve", vocab) == []
    assert unseen_words("a pair of silk boots, silk lace", vocab) == ["silk", "lace"]
    assert unseen_words("a red dress воланчиками", vocab) == []  # said as untranslated
    names = captions.known_names(vocab)
    assert names["kinds"] == list(KINDS) and names["fabrics"] == ["denim", "chiffon"]
    assert names["colours"] == ["black", "white", "red", "navy", "brown"]
    assert names["patterns"] == ["floral", "striped"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Stage-I checkpoint with the vocabulary of TRAINING_CAPTIONS, and one as
    saved before the vocabulary was kept."""
    out = tmp_path_factory.mktemp("prompts")
    old = write_tiny_checkpoint(out / "old", stage=1)
    new = write_tiny_checkpoint(out / "new", stage=1,
                                vocabulary=caption_vocabulary(TRAINING_CAPTIONS))
    return out, old, new


def test_cli_says_what_was_drawn_and_what_the_model_never_saw(tiny, tmp_path, capsys):
    _, old, new = tiny
    args = ["--train", "n", "--n_samples", "1", "--device", "cpu", "--out_dir", str(tmp_path),
            "--prompt", "красное платье с кружевом", "--prompt", "a red floral dress"]
    assert main.main(args + ["--net_g", str(new)]) == 0
    out = capsys.readouterr().out
    assert "prompt 1 (красное платье с кружевом): drawn as: a red dress with lace" in out
    assert "prompt 1 (красное платье с кружевом): not in the training captions: lace " \
           "(the model cannot draw it)" in out
    assert "prompt 2" not in out and "records no vocabulary" not in out
    singles = sorted((tmp_path / "generated").glob("0*.png"))
    assert [p.name for p in singles] == ["000_a-red-dress-with-lace_0.png",
                                         "001_a-red-floral-dress_0.png"]
    # the Russian prompt is drawn as its English reading, exactly
    drawer = sample.Drawer.load(new, "cpu")
    direct = sample.sample_images(drawer.netG, torch.from_numpy(
        encode_texts(["a red dress with lace", "a red floral dress"])), 1, 0, bf16=drawer.bf16)
    for single, want in zip(singles, to_uint8(direct)):
        assert np.array_equal(np.asarray(Image.open(single)), want)
    # a checkpoint saved before the vocabulary was kept: drawn, and said so
    assert main.main(args + ["--net_g", str(old)]) == 0
    out = capsys.readouterr().out
    assert "drawn as: a red dress with lace" in out and "not in the training" not in out
    assert f"note: {old} records no vocabulary of its training captions" in out


def test_the_same_english_prompt_and_seed_give_the_same_images_as_before(tiny):
    """An English prompt reaches the text encoder as typed: the images are those drawn
    from its own embedding, as before Russian prompts were read."""
    _, _, new = tiny
    drawer = sample.Drawer.load(new, "cpu")
    prompts = ["a red floral dress", "a pair of navy pants", "red dress with lace"]
    before = sample.sample_images(drawer.netG, torch.from_numpy(encode_texts(prompts)), 2, 7,
                                  bf16=drawer.bf16)
    assert torch.equal(drawer.draw(prompts, 2, 7), before)
    assert [r.text for r in drawer.read(prompts)] == prompts


def test_the_vocabulary_entry_is_checked_and_kept(tiny, tmp_path):
    _, _, new = tiny
    state = load_checkpoint(new)
    assert state["vocabulary"] == caption_vocabulary(TRAINING_CAPTIONS)
    save_checkpoint({**state, "vocabulary": [1, 2]}, tmp_path / "bad.pt")
    with pytest.raises(UserError, match="'vocabulary' entry is not a list of words"):
        load_checkpoint(tmp_path / "bad.pt")


# ------------------------------------------------------------ labels in pictures

def test_cyrillic_and_accented_labels_are_drawn_not_boxes(tmp_path):
    assert label_font_path() and label_font_path().endswith("DejaVuSans.ttf")
    labels = ["жжжж шшшш", "шшшш жжжж", "crêpe rosé", "crepe rose"]
    path = save_grid(torch.zeros(len(labels), 3, 64, 64), tmp_path / "g.png", nrow=1,
                     row_labels=labels)
    grid = np.asarray(Image.open(path).convert("L"))
    label_w = 200 * 11 // 11
    rows = [grid[2 + r * 66: 2 + r * 66 + 20, :label_w] for r in range(len(labels))]
    assert all((row < 128).sum() > 30 for row in rows)  # something is written in each
    # the same letters in another order, and accents: other pixels
    assert not np.array_equal(rows[0], rows[1]) and not np.array_equal(rows[2], rows[3])

    # PIL's default font draws every Cyrillic letter as the same box: those rows would
    # be equal, and the grid's differ from them
    def boxes(text):
        canvas = Image.new("L", (label_w, 20), 255)
        ImageDraw.Draw(canvas).text((2, 0), text, fill=0, font=ImageFont.load_default(size=11))
        return np.asarray(canvas)
    assert np.array_equal(boxes(labels[0]), boxes(labels[1]))
    assert not np.array_equal(rows[0], boxes(labels[0]))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["красное", "платье", "без", "в", "с", "рукавом", "тёмно",
                                 "вырез", "круглым", "белый", "горошек", "кружева", "-",
                                 "red", "dress", "with", "лодочки", "1", ",", "ё", "Ж"]),
                max_size=8).map(" ".join)
       | st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30))
def test_any_prompt_reads_into_some_text_without_error(prompt):
    r = read_prompt(prompt)
    assert isinstance(r.text, str) and (r.text.strip() or not prompt.strip())
    assert all(w in prompt for w in r.untranslated)
