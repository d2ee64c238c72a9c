"""The words: the vocabulary, the garment captions derived from DFMM's sentences, their
short forms, and prompts as a designer types them, in English or in Russian.

Training, generation, the evaluation and the page all speak through this file:

* the vocabulary: the garment kinds (KINDS), the colour names with their reference
  shades (COLOURS), DFMM's pattern and fabric classes (PATTERNS, FABRICS) and the other
  words captions use for them (the *_ALIASES);
* `derive_captions`: a garment sample's training captions, from the sentences of the
  photo's outfit caption about that garment, its measured colour and its texture
  labels, plus short forms such as "a red floral dress" (`sweep_prompts` writes more);
* `read_prompt`: a Russian or mixed Russian/English prompt turned into the English of
  the training captions ("красное платье в цветочек" -> "a red dress with floral
  patterns") through one glossary (RUSSIAN) and the lemmas of pymorphy3, so that the
  English text encoder reads words it was trained with; English prompts stay as typed;
* `caption_vocabulary` and `unseen_words`: the words of a model's training captions
  (kept in its checkpoint) and the words of a prompt outside them, which it cannot draw.

It imports nothing from the repository (config.py takes KINDS from here), so every
other file can import it.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass

# ------------------------------------------------------------------------ vocabulary

KINDS = ("t-shirt", "dress", "pants", "leggings", "shoes")
# The one mapping of category names (labels.csv) and class-folder names to kinds, read
# through normalise_kind (lower case, "-" for spaces and "_", a plural -s / -es dropped).
# A name not listed (hat, shorts, skirt, outerwear, ...) is not kept.
KIND_ALIASES = {
    "t-shirt": "t-shirt", "tshirt": "t-shirt", "tee": "t-shirt", "tee-shirt": "t-shirt",
    "top": "t-shirt", "tank": "t-shirt", "tank-top": "t-shirt",
    "dress": "dress", "gown": "dress",
    "pants": "pants", "trouser": "pants", "jeans": "pants", "denim": "pants", "chino": "pants",
    "slacks": "pants", "jogger": "pants", "sweatpants": "pants",
    "leggings": "leggings", "legging": "leggings",
    "shoes": "shoes", "shoe": "shoes", "sneaker": "shoes", "trainer": "shoes", "boot": "shoes",
    "heel": "shoes", "high-heel": "shoes", "sandal": "shoes", "loafer": "shoes",
    "footwear": "shoes"}

# The colour vocabulary: common fashion colour names, each with reference sRGB shades
# (mid, dark, light). A garment's measured pixels are named by the nearest shade in
# CIELAB (datasets.name_colour); the first shade is the one the built-in data paints.
COLOURS = {
    "black": [(30, 30, 32), (12, 12, 14), (58, 58, 62)],
    "white": [(248, 248, 246), (222, 222, 218), (236, 236, 240)],
    "grey": [(132, 134, 140), (92, 94, 100), (176, 178, 182)],
    "red": [(200, 32, 42), (140, 18, 28), (228, 72, 72)],
    "pink": [(240, 150, 188), (210, 100, 150), (248, 196, 214)],
    "orange": [(240, 126, 30), (190, 90, 20), (250, 168, 90)],
    "yellow": [(242, 206, 40), (196, 160, 20), (250, 232, 130)],
    "green": [(34, 140, 64), (18, 88, 38), (120, 190, 120)],
    "blue": [(40, 100, 205), (28, 70, 150), (110, 160, 230)],
    "navy": [(26, 36, 88), (16, 22, 56), (44, 56, 110)],
    "purple": [(118, 56, 160), (80, 34, 110), (176, 136, 208)],
    "brown": [(118, 74, 40), (80, 50, 28), (160, 112, 70)],
    "beige": [(222, 201, 160), (196, 174, 130), (236, 222, 192)],
}
# other words a caption may use for a colour of the vocabulary
COLOUR_ALIASES = {"gray": "grey", "khaki": "beige", "cream": "beige", "tan": "beige",
                  "burgundy": "red", "maroon": "red", "violet": "purple", "lilac": "purple",
                  "gold": "yellow", "silver": "grey", "denim-blue": "blue"}
# The pattern vocabulary: DFMM's pattern classes (labels/texture/pattern_ann.txt codes 0-6,
# "other" read as dotted) in the words its captions use.
PATTERNS = ("floral", "graphic", "striped", "pure color", "lattice", "dotted", "color block")
PATTERN_ALIASES = {"solid color": "pure color", "solid": "pure color", "plain": "pure color",
                   "stripe": "striped", "stripes": "striped", "checked": "lattice",
                   "plaid": "lattice", "check": "lattice", "polka-dot": "dotted",
                   "polka dot": "dotted", "dots": "dotted", "colour block": "color block"}
# DFMM fabric classes (labels/texture/fabric_ann.txt codes 0-6)
FABRICS = ("denim", "cotton", "leather", "furry", "knitted", "chiffon", "other")


def normalise_kind(category: str):
    """The kind a category or folder name stands for ("T_Shirts", "Tees", "Dresses",
    "Sneakers"), or None: case, spaces, underscores and a plural are ignored."""
    word = re.sub(r"[\s_]+", "-", str(category).strip().lower())
    for w in (word, word[:-1] if word.endswith("s") else "", word[:-2] if word.endswith("es") else ""):
        if w in KIND_ALIASES:
            return KIND_ALIASES[w]
    return None


# --------------------------------------------------------------------- garment captions
#
# A DFMM caption describes the whole outfit; a training sample is one garment's crop.
# Each sample's captions are derived from the photo's caption and the garment's own
# pixels: the caption's sentences about that garment, a sentence naming its colour
# (measured from its parsing region, or the garment pixels of the crop, unless those
# sentences already name one), its pattern and fabric from labels/texture when the
# sentences lack them, plus short forms such as "a red floral dress". Training draws
# one of them per step, so that a short typed prompt is as much in distribution as a
# long DFMM sentence.

# garment nouns -> the part of the outfit a sentence is about
_GROUP_WORDS = {
    "dress": r"dress(?:es)?|gown|jumpsuit|romper",
    "upper": r"t-shirts?|tee|tees|shirts?|tops?|tanks?|sweaters?|blouses?|jumpers?|hoodies?|"
             r"sweatshirts?|vests?|camisoles?|polos?",
    "lower": r"pants|trousers|jeans|leggings|shorts|skirts?|joggers|tights",
    "outer": r"jackets?|coats?|cardigans?|blazers?|outer clothing",
    "footwear": r"shoes?|sneakers?|boots?|footwear|heels|sandals?|loafers?|slippers?",
    "accessory": r"hats?|caps?|glasses|sunglasses|rings?|bracelets?|watch|belts?|scarf|"
                 r"necklaces?|neckwear|bags?|socks|wrist|finger|accessor(?:y|ies)",
}
_GROUP_RE = {g: re.compile(r"\b(?:" + w + r")\b", re.I) for g, w in _GROUP_WORDS.items()}
# which parts of the outfit describe each kind's crop, in order of preference
KIND_GROUPS = {"t-shirt": ("upper",), "dress": ("dress", "upper"), "pants": ("lower",),
               "leggings": ("lower",), "shoes": ("footwear",)}
KIND_NOUN = {"t-shirt": "T-shirt", "dress": "dress", "pants": "pants", "leggings": "leggings",
             "shoes": "shoes"}
_SENTENCE_RE = re.compile(r"(?<=[.!?])\s+")


def _word_finder(names, aliases):
    """A function text -> the first of `names` or `aliases` in it (as a name), or None."""
    rx = re.compile(r"\b(" + "|".join(sorted([*names, *aliases], key=len, reverse=True)) + r")\b",
                    re.I)

    def find(text: str):
        m = rx.search(text)
        return None if m is None else aliases.get(m.group(1).lower(), m.group(1).lower())
    return find


# the first colour word of a text as a vocabulary name ('gray' -> 'grey'), or None
find_colour = _word_finder(COLOURS, COLOUR_ALIASES)
# the first pattern word of a text as a PATTERNS name ('checked' -> 'lattice'), or None
find_pattern = _word_finder(PATTERNS, PATTERN_ALIASES)
_FABRIC_RE = re.compile(r"\b(" + "|".join(f for f in FABRICS if f != "other") + r")\b", re.I)
# pattern_ann.txt / fabric_ann.txt columns (upper, lower, outer): which one each kind reads
_TEXTURE_COLUMN = {"t-shirt": 0, "dress": 0, "pants": 1, "leggings": 1}


def garment_sentences(caption: str, kind: str) -> list[str]:
    """The sentences of an outfit caption about the garment of `kind`. A sentence that
    names no garment ("It has a round neckline.") belongs to the one before it."""
    picked, group = {}, None
    for sent in (s.strip() for s in _SENTENCE_RE.split(caption)):
        if not sent:
            continue
        hits = [(m.start(), g) for g, rx in _GROUP_RE.items() for m in [rx.search(sent)] if m]
        if hits:
            group = min(hits)[1]
        picked.setdefault(group, []).append(sent)
    for g in KIND_GROUPS[kind]:
        if picked.get(g):
            return picked[g]
    return []


def derive_captions(kind: str, caption: str, colour: str, texture: dict | None = None) -> dict:
    """A garment sample's training captions and attributes.

    kind: the sample's kind; caption: the photo's (outfit) caption; colour: the name
    measured from the garment's pixels (used unless its sentences name one); texture:
    this photo's read_texture_labels entry. Returns {"captions": [long, short, ...],
    "colour", "pattern" (or None), "fabric" (or None)}; deterministic."""
    sents = garment_sentences(caption, kind)
    text = " ".join(sents)
    col = _TEXTURE_COLUMN.get(kind)
    named = find_colour(text)
    colour = named or colour
    pattern = find_pattern(text)
    fabric = (m.group(1).lower() if (m := _FABRIC_RE.search(text)) else None)
    if texture and col is not None:
        pattern = pattern or (texture.get("pattern") or [None] * 3)[col]
        fabric = fabric or (texture.get("fabric") or [None] * 3)[col]
    noun = KIND_NOUN[kind]
    if not sents:
        sents = [f"A pair of {colour} shoes." if kind == "shoes" else f"A {colour} {noun}."]
    elif not named:
        verb = "are" if kind in ("pants", "leggings", "shoes") else "is"
        sents = sents[:1] + [f"The {noun} {verb} {colour}."] + sents[1:]
    if pattern and not find_pattern(" ".join(sents)):
        sents.append(f"It has {pattern} patterns.")
    if fabric and fabric != "other" and not _FABRIC_RE.search(" ".join(sents)):
        sents.append(f"It is with {fabric} fabric.")
    adj = {None: "", "pure color": "", "color block": "color-block ",
           "lattice": "plaid "}.get(pattern, f"{pattern} ")
    if kind in ("pants", "leggings", "shoes"):
        article = "a pair of "
    else:
        article = "an " if colour[0] in "aeiou" else "a "
    short = [f"{article}{colour} {adj}{noun}"]
    if pattern:
        short.append(f"{colour} {noun} with {pattern} patterns")
    else:
        short.append(f"{colour} {noun}")
    return {"captions": [" ".join(sents)] + short, "colour": colour, "pattern": pattern,
            "fabric": fabric}


SWEEP_COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "black")
SWEEP_PATTERNS = ("pure color", "striped", "dotted", "lattice", "floral")


def sweep_prompts(what: str, kind: str) -> list[str]:
    """Short prompts, in the form of the training captions' short forms, that differ in
    one attribute: "a red dress", "an orange dress", ... (colour) or "a red dress",
    "a red striped dress", ... (pattern)."""
    if what == "colour":
        return [derive_captions(kind, "", c)["captions"][1] for c in SWEEP_COLOURS]
    return [derive_captions(kind, f"The {KIND_NOUN[kind]} has {p} patterns.", "red")["captions"][1]
            for p in SWEEP_PATTERNS]


# ------------------------------------------------------------------- Russian prompts
#
# A Russian prompt becomes English before it is encoded: every word is looked up in
# RUSSIAN as typed and by its lemmas (pymorphy3 with the OpenCorpora dictionaries of
# pymorphy3-dicts-ru: "красных" -> "красный", "туфель" -> "туфля"); a few two-word
# forms are joined ("с коротким рукавом" -> short-sleeve, "без рукавов" -> sleeveless,
# "тёмно-синий" / "тёмно синий" -> navy, "круглый вырез" -> round neckline); the
# meanings are then phrased as the short training forms are: "a long red dress with
# floral patterns and lace", "a pair of navy pants with denim fabric". A word the
# glossary lacks stays in the text as typed, and is reported.
#
# Each entry: a Russian word (a lemma, as pymorphy3 gives it) -> "role value[; role
# value]". Roles: kind (a KINDS name), colour (a COLOURS name), shade (dark | light:
# joins the colour after it), pattern (a PATTERNS name), print (a print or motif: the
# pattern named with it, else graphic), fabric, detail (drawn as "with lace"), garment
# (other clothes), length, sleeve, sleeve-noun (рукав), neck-shape, neck-noun (вырез),
# without (без) and skip (words with nothing to draw). The first word listed for a
# name is its Russian name on the page and in evaluate.py's Russian prompts.

RUSSIAN = {
    # the five kinds and their common synonyms
    "футболка": "kind t-shirt", "футболочка": "kind t-shirt", "майка": "kind t-shirt",
    "топ": "kind t-shirt", "топик": "kind t-shirt", "лонгслив": "kind t-shirt; sleeve long-sleeve",
    "платье": "kind dress", "платьице": "kind dress", "сарафан": "kind dress",
    "брюки": "kind pants", "штаны": "kind pants", "джинсы": "kind pants; fabric denim",
    "слаксы": "kind pants", "чиносы": "kind pants", "брючки": "kind pants",
    "леггинсы": "kind leggings", "леггинс": "kind leggings", "легинсы": "kind leggings",
    "легинс": "kind leggings", "лосины": "kind leggings", "лосина": "kind leggings",
    "туфли": "kind shoes", "туфля": "kind shoes", "туфелька": "kind shoes", "обувь": "kind shoes",
    "кроссовки": "kind shoes", "кроссовок": "kind shoes", "кроссовка": "kind shoes",
    "ботинки": "kind shoes", "ботинок": "kind shoes", "сапоги": "kind shoes", "сапог": "kind shoes",
    "кеды": "kind shoes", "кед": "kind shoes", "босоножка": "kind shoes", "сандалия": "kind shoes",
    "лофер": "kind shoes", "мокасин": "kind shoes", "балетка": "kind shoes",
    # other clothes: drawn as their English word (not one of the five kinds)
    "юбка": "garment skirt", "шорты": "garment shorts", "рубашка": "garment shirt",
    "блузка": "garment blouse", "блуза": "garment blouse", "свитер": "garment sweater",
    "джемпер": "garment sweater", "кофта": "garment sweater", "толстовка": "garment sweatshirt",
    "худи": "garment hoodie", "водолазка": "garment turtleneck", "кардиган": "garment cardigan",
    "жакет": "garment jacket", "куртка": "garment jacket", "пиджак": "garment blazer",
    "пальто": "garment coat", "плащ": "garment coat", "жилет": "garment vest",
    "комбинезон": "garment jumpsuit", "костюм": "garment suit", "колготки": "garment tights",
    "носки": "garment socks", "шапка": "garment hat", "кепка": "garment cap",
    "сумка": "garment bag", "шарф": "garment scarf", "ремень": "garment belt",
    "пояс": "garment belt",
    # the colours, their shades and common synonyms
    "чёрный": "colour black", "белый": "colour white", "белоснежный": "colour white",
    "молочный": "colour white", "серый": "colour grey", "графитовый": "colour grey",
    "пепельный": "colour grey", "серебристый": "colour grey", "серебряный": "colour grey",
    "красный": "colour red", "алый": "colour red", "бордовый": "colour red",
    "бордо": "colour red", "вишнёвый": "colour red", "малиновый": "colour red",
    "розовый": "colour pink", "пудровый": "colour pink", "фуксия": "colour pink",
    "оранжевый": "colour orange", "рыжий": "colour orange", "морковный": "colour orange",
    "жёлтый": "colour yellow", "золотой": "colour yellow", "золотистый": "colour yellow",
    "горчичный": "colour yellow", "зелёный": "colour green", "салатовый": "colour green",
    "оливковый": "colour green", "изумрудный": "colour green", "мятный": "colour green",
    "синий": "colour blue", "голубой": "colour blue", "лазурный": "colour blue",
    "бирюзовый": "colour blue", "тёмно-голубой": "colour blue", "тёмно-синий": "colour navy",
    "тёмносиний": "colour navy", "фиолетовый": "colour purple", "лиловый": "colour purple",
    "сиреневый": "colour purple", "пурпурный": "colour purple", "лавандовый": "colour purple",
    "сливовый": "colour purple", "коричневый": "colour brown", "шоколадный": "colour brown",
    "кофейный": "colour brown", "каштановый": "colour brown", "бежевый": "colour beige",
    "кремовый": "colour beige", "песочный": "colour beige", "телесный": "colour beige",
    "хаки": "colour beige",
    "тёмный": "shade dark", "светлый": "shade light",
    # the patterns
    "цветочный": "pattern floral", "цветочек": "pattern floral", "цветок": "pattern floral",
    "графический": "pattern graphic", "надпись": "pattern graphic", "логотип": "pattern graphic",
    "принт": "print graphic", "рисунок": "print graphic", "узор": "print graphic",
    "орнамент": "print graphic",
    "полосатый": "pattern striped", "полоска": "pattern striped", "полоса": "pattern striped",
    "однотонный": "pattern pure color", "одноцветный": "pattern pure color",
    "однотон": "pattern pure color",
    "клетчатый": "pattern lattice", "клетка": "pattern lattice", "клеточка": "pattern lattice",
    "шотландка": "pattern lattice",
    "горошек": "pattern dotted", "горох": "pattern dotted", "точечный": "pattern dotted",
    "крапинка": "pattern dotted",
    "колор-блок": "pattern color block", "колорблок": "pattern color block",
    # the fabrics: DFMM's classes, then others a designer names
    "джинсовый": "fabric denim", "деним": "fabric denim", "джинса": "fabric denim",
    "хлопковый": "fabric cotton", "хлопок": "fabric cotton", "хлопчатобумажный": "fabric cotton",
    "кожаный": "fabric leather", "кожа": "fabric leather", "экокожа": "fabric leather",
    "кожзам": "fabric leather", "меховой": "fabric furry", "мех": "fabric furry",
    "пушистый": "fabric furry", "плюшевый": "fabric furry", "вязаный": "fabric knitted",
    "вязка": "fabric knitted", "трикотажный": "fabric knitted", "трикотаж": "fabric knitted",
    "шифоновый": "fabric chiffon", "шифон": "fabric chiffon",
    "шёлковый": "fabric silk", "шёлк": "fabric silk", "льняной": "fabric linen",
    "лён": "fabric linen",
    "шерстяной": "fabric wool", "шерсть": "fabric wool", "атласный": "fabric satin",
    "атлас": "fabric satin", "бархатный": "fabric velvet", "бархат": "fabric velvet",
    "замшевый": "fabric suede", "замша": "fabric suede", "вельветовый": "fabric corduroy",
    "вельвет": "fabric corduroy", "кашемировый": "fabric cashmere", "кашемир": "fabric cashmere",
    "твидовый": "fabric tweed", "твид": "fabric tweed", "флисовый": "fabric fleece",
    "флис": "fabric fleece", "велюровый": "fabric velour", "велюр": "fabric velour",
    "сетчатый": "fabric mesh", "сетка": "fabric mesh",
    # details
    "кружево": "detail lace", "кружевной": "detail lace", "вышивка": "detail embroidery",
    "вышитый": "detail embroidery", "бахрома": "detail fringe", "оборка": "detail ruffles",
    "рюша": "detail ruffles", "пайетка": "detail sequins", "блёстка": "detail sequins",
    "бант": "detail bow", "бантик": "detail bow", "карман": "detail pockets",
    "пуговица": "detail buttons", "молния": "detail zipper", "капюшон": "detail hood",
    "бретель": "detail straps", "бретелька": "detail straps", "лямка": "detail straps",
    "разрез": "detail slit", "воротник": "detail collar",
    # length, sleeves and necklines
    "длинный": "length long", "короткий": "length short", "макси": "length long",
    "мини": "length short", "миди": "length three-quarter", "укороченный": "length three-quarter",
    "безрукавный": "sleeve sleeveless", "рукав": "sleeve-noun sleeve",
    "вырез": "neck-noun neckline", "горловина": "neck-noun neckline",
    "декольте": "neck-noun neckline", "круглый": "neck-shape round",
    "v-образный": "neck-shape v-shape", "треугольный": "neck-shape v-shape",
    "квадратный": "neck-shape square", "стойка": "neck-shape standing",
    "воротник-стойка": "neck-shape standing; neck-noun neckline",
    "без": "without -",
    # words with nothing to draw
    **{w: "skip -" for w in ("в", "во", "с", "со", "и", "или", "на", "из", "для", "а", "но",
                             "к", "по", "от", "до", "под", "о", "об", "же", "это", "очень",
                             "пара", "штука", "пожалуйста", "нарисовать", "сгенерировать",
                             "показать", "сделать", "хотеть", "нужно", "нужный", "мне", "я",
                             "женский", "мужской", "цвет", "стиль")},
}
PAIRED = ("pants", "leggings", "shoes")  # "a pair of ..."
SLEEVE_OF_LENGTH = {"short": "short-sleeve", "long": "long-sleeve",
                    "three-quarter": "medium-sleeve"}
# English words a mixed prompt may use besides the glossary's own English ones
ENGLISH_EXTRA = {"jeans": "kind pants; fabric denim", "sneakers": "kind shoes",
                 "boots": "kind shoes", "heels": "kind shoes", "sandals": "kind shoes",
                 "sleeve": "sleeve-noun sleeve", "sleeves": "sleeve-noun sleeve",
                 "neckline": "neck-noun neckline", "without": "without -", "dark": "shade dark",
                 "light": "shade light", "print": "print graphic",
                 **{w: "skip -" for w in ("a", "an", "the", "of", "pair", "with", "and", "in")}}
_CYRILLIC_RE = re.compile("[\u0400-\u04ff]")
_PROMPT_WORD_RE = re.compile(r"[^\W\d_]+(?:-[^\W\d_]+)*|\d+")
# endings tried off a word neither pymorphy3 nor the glossary knows ("принтом" -> "принт")
_ENDINGS = ("ами", "ями", "ом", "ем", "ой", "ей", "ах", "ях", "ы", "и", "а", "я", "у", "ю", "е")


def _key(word: str) -> str:
    return word.lower().replace("ё", "е")


def _meanings(spec: str) -> tuple:
    """"kind pants; fabric denim" -> (("kind", "pants"), ("fabric", "denim"))."""
    return tuple(tuple(part.strip().split(" ", 1)) for part in spec.split(";"))


_GLOSSARY = {_key(w): _meanings(spec) for w, spec in RUSSIAN.items()}
# the English side: every word the glossary translates into, and the vocabulary's own
# names and aliases, for the English words of a mixed prompt
_ENGLISH = {**{a: (("kind", k),) for a, k in KIND_ALIASES.items()},
            **{v: ((r, v),) for ms in _GLOSSARY.values() for r, v in ms if v != "-"},
            **{KIND_NOUN[k].lower(): (("kind", k),) for k in KINDS},
            **{c: (("colour", COLOUR_ALIASES.get(c, c)),) for c in [*COLOURS, *COLOUR_ALIASES]},
            **{p: (("pattern", PATTERN_ALIASES.get(p, p)),) for p in [*PATTERNS, *PATTERN_ALIASES]},
            **{w: _meanings(spec) for w, spec in ENGLISH_EXTRA.items()}}


def russian_name(role: str, value: str) -> str | None:
    """The first Russian word the glossary lists for a name and nothing else ("colour",
    "red" -> "красный"; "fabric", "denim" -> "джинсовый", not "джинсы"), else None."""
    return next((w for w, spec in RUSSIAN.items() if _meanings(spec) == ((role, value),)), None)


def glossary_gaps() -> list[str]:
    """Names of the vocabulary (kinds, colours, patterns, fabrics but "other") that no
    Russian word of the glossary translates into: "colour teal", ...; [] when complete."""
    have = {m for ms in _GLOSSARY.values() for m in ms}
    want = ([("kind", k) for k in KINDS] + [("colour", c) for c in COLOURS]
            + [("pattern", p) for p in PATTERNS] + [("fabric", f) for f in FABRICS if f != "other"])
    return [f"{r} {v}" for r, v in want if (r, v) not in have]


class MissingAnalyser(RuntimeError):
    """pymorphy3 or its Russian dictionaries are not installed."""


@functools.lru_cache(maxsize=1)
def _analyser():
    try:
        import pymorphy3
        return pymorphy3.MorphAnalyzer(lang="ru")
    except (ImportError, ValueError, OSError) as e:  # not installed, or no dictionaries
        raise MissingAnalyser("Russian prompts need pymorphy3 and pymorphy3-dicts-ru "
                              f"(pip install -r requirements.txt): {e}") from None


@functools.lru_cache(maxsize=8192)
def _russian_meanings(word: str) -> tuple | None:
    """The glossary meanings of a word with Cyrillic letters, or None: the word as typed,
    then its lemmas, then the word without a case ending, then (for a compound such as
    "красно-белый" or "туфли-лодочки") each of its parts, ("unknown", part) for a part
    it does not know."""
    keys = [_key(word)] + [_key(p.normal_form) for p in _analyser().parse(word)]
    keys += [_key(word)[:-len(e)] for e in _ENDINGS
             if _key(word).endswith(e) and len(word) - len(e) >= 3]
    for k in keys:
        if k in _GLOSSARY:
            return _GLOSSARY[k]
    parts = word.split("-")
    if len(parts) > 1 and all(parts):
        found = [_russian_meanings(p) if _CYRILLIC_RE.search(p) else _ENGLISH.get(p.lower())
                 for p in parts]
        if any(found):
            return tuple(m for p, ms in zip(parts, found)
                         for m in (ms or (("unknown" if _CYRILLIC_RE.search(p) else "word", p),)))
    return None


def _word_meanings(word: str) -> tuple:
    """((role, value), ...) of one word of a prompt; ("word", w) for an English word the
    glossary does not know and ("unknown", w) for a Russian one."""
    if word.isdigit():
        return (("skip", "-"),)
    if _CYRILLIC_RE.search(word):
        return _russian_meanings(word) or (("unknown", word),)
    kind = normalise_kind(word)  # "dresses", "trousers"
    return _ENGLISH.get(word.lower()) or ((("kind", kind),) if kind else (("word", word),))


def _shaded(colour: str, shade: str) -> str:
    """A colour with тёмно- / светло- before it, as the vocabulary can name it."""
    if colour == "blue" and shade == "dark":
        return "navy"
    return "blue" if colour == "navy" and shade == "light" else colour


def _joined(found: list) -> list:
    """The word meanings with the two-word forms joined: a length and рукав -> a sleeve,
    без and рукав -> sleeveless, без and a detail -> "without ...", a shade and a colour
    -> the shaded colour, a neckline shape beside вырез -> the neckline, a colour between
    в / с and a pattern -> the pattern's colour ("в белый горошек"). `skip` words go."""
    out = []
    for i, (role, value, word) in enumerate(found):
        prev = out[-1][0] if out else None
        if role == "skip":
            continue
        if role == "colour" and 0 < i < len(found) - 1 and found[i - 1][2].lower() in \
                ("в", "с", "со") and found[i + 1][0] in ("pattern", "print"):
            role = "pattern-colour"
        if role == "sleeve-noun" and prev in ("without", "length"):
            sleeve = "sleeveless" if prev == "without" else SLEEVE_OF_LENGTH[out[-1][1]]
            out[-1] = ("sleeve", sleeve, out[-1][2])
        elif role == "colour" and prev == "shade":
            out[-1] = ("colour", _shaded(value, out[-1][1]), out[-1][2])
        elif {role, prev} == {"neck-shape", "neck-noun"}:
            out[-1] = ("neckline", value if role == "neck-shape" else out[-1][1], out[-1][2])
        elif prev == "without" and role in ("pattern", "print"):
            out[-1] = ("pattern", "pure color", out[-1][2])  # без рисунка: plain
        elif prev == "without" and role in ("detail", "fabric", "garment"):
            out[-1] = ("without", value, out[-1][2])
        else:
            out.append((role, value, word))
    return out


def _and(words) -> str:
    words = list(words)
    return ", ".join(words[:-1]) + " and " + words[-1] if len(words) > 1 else "".join(words)


def _unique(items) -> list:
    return list(dict.fromkeys(items))


@dataclass(frozen=True)
class Reading:
    """A prompt as the text encoder reads it. `text` is `prompt` itself for an English
    prompt; `untranslated`: its Russian words the glossary has no English for (kept in
    `text` as typed); kind, colours, patterns: what was recognised in a Russian prompt."""
    prompt: str
    text: str
    untranslated: tuple = ()
    kind: str | None = None
    colours: tuple = ()
    patterns: tuple = ()

    @property
    def translated(self) -> bool:
        return self.text != self.prompt


def read_prompt(prompt: str) -> Reading:
    """A prompt in the English of the training captions. Without Cyrillic letters it is
    returned unchanged (the very same string); otherwise its words are translated and
    phrased as a short training caption: "красное платье с кружевом" -> "a red dress
    with lace", "пара тёмно-синих джинсов" -> "a pair of navy pants with denim fabric"."""
    if not _CYRILLIC_RE.search(prompt):
        return Reading(prompt, prompt)
    words, found, i = _PROMPT_WORD_RE.findall(prompt), [], 0
    while i < len(words):
        two = " ".join(words[i:i + 2]).lower()  # "pure color", "polka dot"
        if i + 1 < len(words) and not _CYRILLIC_RE.search(two) and two in _ENGLISH:
            found += [(r, v, two) for r, v in _ENGLISH[two]]
            i += 2
            continue
        found += [(r, v, v if r in ("word", "unknown") else words[i])  # a compound's part
                  for r, v in _word_meanings(words[i])]
        i += 1
    return _phrase(prompt, _joined(found))


def _phrase(prompt: str, found: list) -> Reading:
    """The meanings of a prompt's words as a short training caption."""
    of = {}
    for role, value, word in found:
        of.setdefault(role, []).append(word if role in ("word", "unknown") else value)
    patterns = _unique(of.get("pattern", []) or of.get("print", []))  # a print alone: graphic
    kinds = _unique(of.get("kind", []))
    nouns = [(KIND_NOUN[k], k in PAIRED) for k in kinds] + [(g, False) for g in
                                                           _unique(of.get("garment", []))]
    colours = _unique(of.get("colour", []))
    adjectives = _unique(of.get("length", []) + of.get("sleeve", []) + of.get("shade", []))
    adjectives += [_and(colours)] if colours else []
    on = _and(_unique(of.get("pattern-colour", [])))  # the colour of the dots or stripes
    tails = [f"{on + ' ' if on else ''}{_and(patterns)} patterns"] if patterns else []
    tails += [f"{_and(_unique(of['fabric']))} fabric"] if "fabric" in of else []
    tails += [f"a {_and(_unique(of['neckline']))} neckline"] if "neckline" in of else []
    tails += _unique(of.get("detail", []) + ["a neckline"] * ("neck-noun" in of)
                     + ["sleeves"] * ("sleeve-noun" in of))
    text = " ".join(adjectives + [nouns[0][0]] if nouns else adjectives)
    if nouns:
        text = ("a pair of " if nouns[0][1] else "an " if text[0] in "aeiou" else "a ") + text
        text += "".join(f" and {'a pair of ' if p else 'an ' if n[0] in 'aeiou' else 'a '}{n}"
                        for n, p in nouns[1:])
    if tails:
        text += (" with " if text else "") + _and(tails)
    if [v for v in of.get("without", []) if v != "-"]:
        text += " without " + _and(_unique(v for v in of["without"] if v != "-"))
    # words kept as they are, in their order: English and unknown words as typed, a
    # neckline shape without its вырез and a без without what it leaves out in English
    kept = [w if role in ("word", "unknown") else value if role == "neck-shape" else "without"
            for role, value, w in found if role in ("word", "unknown", "neck-shape")
            or (role, value) == ("without", "-")]
    text = " ".join([text] + kept).strip() or prompt
    return Reading(prompt, text, tuple(_unique(w for r, _, w in found if r == "unknown")),
                   kinds[0] if kinds else None, tuple(colours), tuple(patterns))


# --------------------------------------------------- the words of the training captions

_WORD_RE = re.compile(r"[^\W\d_]+(?:['-][^\W\d_]+)*")
# words that name nothing to draw: not reported when a model's captions lack them
FUNCTION_WORDS = frozenset(
    "a an the of pair with and or in on at by for to from is are it its has have this that "
    "these those be very as some any".split())


def caption_vocabulary(captions) -> list[str]:
    """The sorted lower-case words of a model's training captions (lists of captions per
    sample, or captions), each hyphenated word also by its parts ("long-sleeve", "long",
    "sleeve"). Kept in the training checkpoint as its "vocabulary" entry."""
    words = set()
    for caps in captions:
        for text in ([caps] if isinstance(caps, str) else caps):
            for w in _WORD_RE.findall(text.lower()):
                words.add(w)
                words.update(p for p in re.split(r"['-]", w) if p)
    return sorted(words)


def _known(word: str, vocabulary) -> bool:
    """`word` or its singular or plural form ("dresses", "shoe") is in `vocabulary`, or each
    part of a hyphenated word is."""
    forms = {word, word + "s", word + "es", word[:-1] if word.endswith("s") else word,
             word[:-2] if word.endswith("es") else word}
    if forms & vocabulary:
        return True
    parts = [p for p in re.split(r"['-]", word) if p]
    return len(parts) > 1 and all(_known(p, vocabulary) for p in parts)


def unseen_words(text: str, vocabulary) -> list[str]:
    """The content words of `text` (English: its Russian words are reported by
    read_prompt) that are not in `vocabulary` (a set of caption_vocabulary words), in
    their order, each once."""
    out = []
    for w in _WORD_RE.findall(text.lower()):
        if w not in FUNCTION_WORDS and not _CYRILLIC_RE.search(w) and not _known(w, vocabulary):
            out.append(w)
    return _unique(out)


def known_names(vocabulary=None) -> dict:
    """{"kinds", "colours", "patterns", "fabrics": the names of the vocabulary whose words
    all occur in `vocabulary` (a model's caption words; None: all of them)}."""
    def has(name: str) -> bool:
        return vocabulary is None or all(_known(w, vocabulary) for w in name.lower().split())
    return {"kinds": [k for k in KINDS if has(KIND_NOUN[k])],
            "colours": [c for c in COLOURS if has(c)],
            "patterns": [p for p in PATTERNS if has(p) or any(
                has(a) for a, n in PATTERN_ALIASES.items() if n == p)],
            "fabrics": [f for f in FABRICS if f != "other" and has(f)]}


# ----------------------------------------- Russian twins of the short training prompts

# How evaluate.py says a short prompt in Russian: each kind's nouns (nominative, its
# gender or "plur", genitive plural for "пара ..."), each pattern's phrase after the noun
RUSSIAN_NOUNS = {"t-shirt": [("футболка", "femn", None), ("майка", "femn", None)],
                 "dress": [("платье", "neut", None)],
                 "pants": [("брюки", "plur", "брюк"), ("штаны", "plur", "штанов")],
                 "leggings": [("леггинсы", "plur", "леггинсов"), ("лосины", "plur", "лосин")],
                 "shoes": [("туфли", "plur", "туфель"), ("кроссовки", "plur", "кроссовок"),
                           ("ботинки", "plur", "ботинок")]}
RUSSIAN_PATTERNS = {"floral": "в цветочек", "graphic": "с принтом", "striped": "в полоску",
                    "pure color": "однотонный", "lattice": "в клетку", "dotted": "в горошек",
                    "color block": "в стиле колор-блок"}


def _inflect(adjective: str, grammemes: set) -> str:
    parse = _analyser().parse(adjective)[0]
    form = parse.inflect(grammemes)
    return form.word if form is not None else adjective


def russian_prompt(kind: str, colour: str, pattern: str | None = None, variant: int = 0) -> str:
    """A short Russian prompt for a garment, as a designer may type it, the colour
    agreeing with the noun; `variant` picks the noun and the word order: "красное
    платье в цветочек", "Платье красное, в цветочек", "пара красных туфель в горошек"."""
    noun, gender, gen_plural = RUSSIAN_NOUNS[kind][(variant // 3) % len(RUSSIAN_NOUNS[kind])]
    number = {"plur"} if gender == "plur" else {"sing", gender}
    adj = _inflect(russian_name("colour", colour), number | {"nomn"})
    said = RUSSIAN_PATTERNS.get(pattern, "") if pattern else ""
    if said and " " not in said:  # an adjective ("однотонный") agrees with the noun too
        said = _inflect(said, number | {"nomn"})
    form = variant % 3
    if form == 2 and gen_plural:  # "пара красных туфель": the genitive plural
        if said and " " not in said:
            said = _inflect(said, {"plur", "gent"})
        return f"пара {_inflect(russian_name('colour', colour), {'plur', 'gent'})} {gen_plural}" \
               + (f" {said}" if said else "")
    if form == 1:
        return f"{noun.capitalize()} {adj}" + (f", {said}" if said else "")
    return f"{adj} {noun}" + (f" {said}" if said else "")
