"""Caption metrics (pycocoevalcap): exact cases, hand-computed BLEU / ROUGE-L, tokenizers, METEOR, no Java."""

from __future__ import annotations

import logging
import math
import shutil

import pytest

pytest.importorskip("pycocoevalcap.bleu.bleu")

from crab_jax.metrics import captions as C  # noqa: E402

HAS_JAVA = shutil.which("java") is not None
needs_java = pytest.mark.skipif(not HAS_JAVA, reason="no java on PATH")

# Ordinary caption sentences (punctuation, clitics, numbers, hyphens, brackets, quotes) and what the
# Stanford PTBTokenizer jar of pycocoevalcap makes of them (recorded from it, punctuation dropped).
PTB_TOKENIZED = {
    "A man is playing the guitar while a woman sings.": "a man is playing the guitar while a woman sings",
    "The dog's owner can't find it; she won't stop calling!":
        "the dog 's owner ca n't find it she wo n't stop calling",
    "Someone says \"hello,\" and then a car's engine starts.": "someone says hello and then a car 's engine starts",
    "Two people are talking (loudly) in a crowded room?": "two people are talking -lrb- loudly -rrb- in a crowded room",
    "It's 3.5 km away: 1,000 people cheer... then silence.": "it 's 3.5 km away 1,000 people cheer then silence",
    "A well-known singer performs at 10:30 -- everyone claps.": "a well-known singer performs at 10:30 everyone claps",
    "They're laughing, we'll hear birds, and I'd say you've heard it too.":
        "they 're laughing we 'll hear birds and i 'd say you 've heard it too",
    "Water is running in the background": "water is running in the background",
    "A baby cries, and a man speaks softly in the U.S. style.":
        "a baby cries and a man speaks softly in the u.s. style",
}
SENTENCES = list(PTB_TOKENIZED)


def test_identical_captions_score_one():
    preds = {"v1": "a man plays a guitar on the stage", "v2": "dogs are barking at a passing car"}
    got = C.caption_scores(preds, {k: [v] for k, v in preds.items()}, with_meteor=False)
    assert got["BLEU@4"] == pytest.approx(1.0, abs=1e-6)
    assert got["BLEU@1"] == pytest.approx(1.0, abs=1e-6)
    assert got["ROUGE-L"] == pytest.approx(1.0, abs=1e-12)
    assert got["CIDEr"] == pytest.approx(10.0, abs=1e-9)  # every n-gram unique to its video: cosine 1, x10
    assert got["n"] == 2 and got["METEOR"] is None


def test_hand_computed_bleu_and_rouge():
    # 3 words against 6: every n-gram (n <= 3) matches; brevity penalty exp(1 - 6/3) = e^-1.
    got = C.caption_scores({1: "the cat sat"}, {1: ["the cat sat on the mat"]}, with_meteor=False)
    for n in (1, 2, 3):
        assert got[f"BLEU@{n}"] == pytest.approx(math.exp(-1), abs=1e-7)
    # no 4-gram: pycocoevalcap's smoothing (1e-15 + 0) / (1e-9 + 0) = 1e-6 enters the geometric mean
    assert got["BLEU@4"] == pytest.approx(math.exp(-1) * (1e-6) ** 0.25, rel=1e-6)
    # LCS 3: P = 1, R = 1/2, beta = 1.2: (1 + 1.44) P R / (R + 1.44 P)
    assert got["ROUGE-L"] == pytest.approx(2.44 * 0.5 / (0.5 + 1.44), abs=1e-12)

    # one substitution: p1 = 3/4, p2 = 2/3, p3 = 1/2, equal lengths (no penalty); LCS 3 of 4
    got = C.caption_scores({1: "a b c d"}, {1: ["a b c e"]}, with_meteor=False, tokenizer="python")
    assert got["BLEU@1"] == pytest.approx(3 / 4, abs=1e-8)
    assert got["BLEU@2"] == pytest.approx((3 / 4 * 2 / 3) ** 0.5, abs=1e-8)
    assert got["BLEU@3"] == pytest.approx((3 / 4 * 2 / 3 * 1 / 2) ** (1 / 3), abs=1e-8)
    assert got["ROUGE-L"] == pytest.approx(0.75, abs=1e-12)


def test_punctuation_and_case_do_not_count():
    plain = C.caption_scores({1: "a dog barks at a cat"}, {1: ["a dog barks loudly at the cat"]}, with_meteor=False)
    noisy = C.caption_scores({1: "A dog barks, at a cat!"}, {1: ["A dog barks loudly -- at the CAT."]},
                             with_meteor=False)
    for name in ("BLEU@1", "BLEU@4", "ROUGE-L", "CIDEr"):
        assert noisy[name] == pytest.approx(plain[name], abs=1e-12), name


def test_python_tokenizer_reproduces_the_recorded_ptb_output():
    assert C.python_tokenize(SENTENCES) == list(PTB_TOKENIZED.values())


@needs_java
def test_java_and_python_tokenizers_agree():
    java = C.java_tokenize(SENTENCES)
    python = C.python_tokenize(SENTENCES)
    mismatches = [(s, j, p) for s, j, p in zip(SENTENCES, java, python) if j != p]
    assert not mismatches, "\n".join(f"{s!r}: java {j!r} != python {p!r}" for s, j, p in mismatches)


@needs_java
@pytest.mark.slow
def test_meteor_is_a_float_with_java():
    got = C.caption_scores({1: "a man is playing a guitar", 2: "a dog barks"},
                           {1: ["a man plays the guitar"], 2: ["a dog is barking", "dogs bark"]})
    assert isinstance(got["METEOR"], float) and 0.0 < got["METEOR"] < 1.0
    assert got["tokenizer"] == C.TOKENIZER_JAVA


def test_without_java_meteor_is_none_and_nothing_raises(monkeypatch, caplog):
    monkeypatch.setattr(C.shutil, "which", lambda name: None)
    with caplog.at_level(logging.WARNING, logger=C.log.name):
        got = C.caption_scores({1: "the cat sat"}, {1: ["the cat sat on the mat"]})
    assert got["METEOR"] is None and got["tokenizer"] == C.TOKENIZER_PYTHON
    assert got["BLEU@1"] == pytest.approx(math.exp(-1), abs=1e-7)
    assert "METEOR unavailable" in caplog.text and "java" in caplog.text
    with pytest.raises(ValueError, match="needs Java"):
        C.caption_scores({1: "x"}, {1: ["x"]}, tokenizer="java")


def test_failing_java_tokenizer_falls_back(monkeypatch, caplog):
    if not HAS_JAVA:
        monkeypatch.setattr(C.shutil, "which", lambda name: "/nonexistent/java")

    def broken(captions, java="java"):
        raise RuntimeError("jar exploded")

    monkeypatch.setattr(C, "java_tokenize", broken)
    with caplog.at_level(logging.WARNING, logger=C.log.name):
        got = C.caption_scores({1: "a b c d"}, {1: ["a b c e"]}, with_meteor=False)
    assert got["tokenizer"] == C.TOKENIZER_PYTHON and "jar exploded" in caplog.text
    assert got["BLEU@1"] == pytest.approx(3 / 4, abs=1e-8)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="no predictions"):
        C.caption_scores({}, {})
    with pytest.raises(ValueError, match="ids differ"):
        C.caption_scores({1: "a"}, {2: ["a"]})
    with pytest.raises(ValueError, match="non-empty list of strings"):
        C.caption_scores({1: "a"}, {1: "a"})
    with pytest.raises(ValueError, match="must be a string"):
        C.caption_scores({1: None}, {1: ["a"]})
