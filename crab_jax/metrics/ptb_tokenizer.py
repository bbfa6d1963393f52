"""A pure-Python stand-in for pycocoevalcap's tokenisation (Stanford ``PTBTokenizer -preserveLines
-lowerCase`` + dropping its punctuation tokens), for machines without Java.

It reproduces the Stanford tokenizer's behaviour on ordinary caption sentences, which is what the
caption metrics see:

* lower-case; split on whitespace;
* split off sentence punctuation ``. , ; : ! ?`` (runs like ``!!`` stay one token), quotes,
  brackets (``( ) [ ] { }`` -> ``-lrb- -rrb- -lsb- -rsb- -lcb- -rcb-``, which pycocoevalcap keeps,
  because its drop list is upper-case), ``$`` before a number, ``%``, ``--`` and ``...``;
* keep numbers with ``.``/``,``/``:`` inside (``3.5``, ``1,000``, ``10:30``), hyphenated words,
  dotted abbreviations (``u.s.``, ``mr.``, ``e.g.``) and words with inner dots;
* split the clitics ``n't 's 're 've 'll 'd 'm`` and ``cannot gonna wanna gotta lemme``;
* then drop the tokens in :data:`PUNCTUATIONS` (pycocoevalcap's list).

Exotic input (URLs, emoticons, unicode quotes, sentence-final abbreviations) may tokenise
differently from Stanford's; on such text the scores move slightly.
"""

from __future__ import annotations

import re

# pycocoevalcap.tokenizer.ptbtokenizer.PUNCTUATIONS (tokens removed after tokenisation).
PUNCTUATIONS = ("''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
                ".", "?", "!", ",", ":", "-", "--", "...", ";")

# Stanford's renderings: brackets as PTB escapes (lower-cased), a double quote as a (dropped) quote pair.
_RENDERED = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-", '"': "''"}
_ABBREVIATIONS = frozenset(
    "mr. mrs. ms. dr. st. jr. sr. prof. vs. etc. inc. ltd. co. corp. mt. ft. no. approx. dept. est. "
    "jan. feb. mar. apr. jun. jul. aug. sep. sept. oct. nov. dec.".split())
_SPLIT_WORDS = {"cannot": ("can", "not"), "gonna": ("gon", "na"), "wanna": ("wan", "na"),
                "gotta": ("got", "ta"), "lemme": ("lem", "me")}
_CLITIC = re.compile(r"^(.*[a-z])(n't)$|^(.*[a-z0-9])('s|'re|'ve|'ll|'d|'m)$")
# Inner separators: "--", "...", and , ; : not between two digits.
_INNER = re.compile(r"(--|\.\.\.|(?<![0-9])[,;:]|[,;:](?![0-9]))")
_LEADING = re.compile(r"^(\"|`+|'(?![0-9a-z])|'(?=[a-z]+'$)|[(\[{]|\$(?=[0-9.]))")
_TRAILING = re.compile(r"(\"|'|`+|[)\]}]|[!?]+|\.\.\.|[,;:%]|--)$")


def _is_abbreviation(word: str) -> bool:
    return word in _ABBREVIATIONS or re.fullmatch(r"(?:[a-z]\.)+", word) is not None


def _split_chunk(chunk: str) -> list[str]:
    """Tokens of one whitespace-free, lower-cased chunk."""
    head, tail = [], []
    while chunk:
        m = _LEADING.match(chunk)
        if not m:
            break
        head.append(m.group(0))
        chunk = chunk[m.end():]
    while chunk:
        m = _TRAILING.search(chunk)
        if m:
            tail.insert(0, m.group(0))
            chunk = chunk[:m.start()]
        elif chunk.endswith(".") and not _is_abbreviation(chunk):
            tail.insert(0, ".")
            chunk = chunk[:-1]
        else:
            break
    middle: list[str] = []
    for piece in _INNER.split(chunk):
        if not piece:
            continue
        if piece in _SPLIT_WORDS:
            middle.extend(_SPLIT_WORDS[piece])
            continue
        m = _CLITIC.match(piece)
        if m:
            stem, clitic = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
            middle.extend([stem, clitic])
        else:
            middle.append(piece)
    return [_RENDERED.get(t, t) for t in head + middle + tail]


def ptb_tokens(text: str) -> list[str]:
    """Stanford-PTB-like tokens of one line of text, lower-cased (punctuation tokens kept)."""
    out: list[str] = []
    for chunk in text.lower().split():
        out.extend(_split_chunk(chunk))
    return out


def tokenize_caption(text: str) -> str:
    """What pycocoevalcap's ``PTBTokenizer`` makes of one caption: the tokens joined by spaces,
    punctuation tokens dropped."""
    return " ".join(t for t in ptb_tokens(text.replace("\n", " ")) if t not in PUNCTUATIONS)
