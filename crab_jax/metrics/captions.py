"""AV captioning metrics (spec A.6.7): BLEU@1-4, METEOR, ROUGE-L and CIDEr with pycocoevalcap 1.2.

The original repository has no captioning scorer; these are the standard COCO caption metrics,
computed by pycocoevalcap's own scorers (``Bleu(4)`` with its "closest" reference length,
``Meteor``, ``Rouge`` with β = 1.2, ``Cider`` = CIDEr-D with σ = 6, ×10) on captions tokenised
the COCO way. Install it with ``pip install 'crab_jax[eval]'``; it is imported only when
:func:`caption_scores` runs.

Java (``shutil.which("java")``):

* With Java, captions are tokenised by the Stanford ``PTBTokenizer`` jar that pycocoevalcap ships,
  with pycocoevalcap's options (``-preserveLines -lowerCase``; plus ``-encoding utf-8``) and its
  punctuation list dropped afterwards. The jar is run on a temporary file outside the package
  (pycocoevalcap's wrapper writes into its own, possibly read-only, install folder). METEOR runs
  the ``meteor-1.5.jar`` (``-Xmx2G``; loading its paraphrase table takes seconds to tens of seconds).
* Without Java (or if the tokenizer jar fails), captions are tokenised by
  :mod:`crab_jax.metrics.ptb_tokenizer`, a pure-Python equivalent on ordinary
  sentences (lower-case, punctuation split off, the same punctuation tokens dropped), and METEOR,
  which exists only as a Java program, is reported as ``None`` with the reason logged. Nothing
  raises for a missing Java.

Scores are corpus-level as pycocoevalcap computes them (BLEU from summed n-gram counts, METEOR
from the jar's aggregate, ROUGE-L and CIDEr as means of the per-caption scores), as fractions
(CIDEr on its ×10 scale).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from typing import Hashable, Mapping, Sequence

from crab_jax.metrics.ptb_tokenizer import PUNCTUATIONS, tokenize_caption

log = logging.getLogger(__name__)

METRIC_NAMES = ("BLEU@1", "BLEU@2", "BLEU@3", "BLEU@4", "METEOR", "ROUGE-L", "CIDEr")
PTB_JAR = "stanford-corenlp-3.4.1.jar"
PTB_CLASS = "edu.stanford.nlp.process.PTBTokenizer"
PTB_TIMEOUT_S = 600
TOKENIZER_JAVA = "stanford-ptb (java)"
TOKENIZER_PYTHON = "ptb (pure python)"


def _require_pycocoevalcap():
    try:
        from pycocoevalcap.tokenizer import ptbtokenizer
    except ImportError as e:
        raise ImportError("caption metrics need pycocoevalcap==1.2: pip install 'crab_jax[eval]'") from e
    return ptbtokenizer


def java_tokenize(captions: Sequence[str], java: str = "java") -> list[str]:
    """Tokenises captions with the Stanford PTB tokenizer jar of pycocoevalcap, one output line per
    caption, pycocoevalcap's punctuation tokens dropped.

    Raises:
      RuntimeError: the jar failed or returned a different number of lines.
      OSError / subprocess.SubprocessError: Java could not run.
    """
    jar = os.path.join(os.path.dirname(os.path.abspath(_require_pycocoevalcap().__file__)), PTB_JAR)
    lines = [c.replace("\r", " ").replace("\n", " ") for c in captions]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "captions.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines))
        proc = subprocess.run([java, "-cp", jar, PTB_CLASS, "-preserveLines", "-lowerCase", "-encoding", "utf-8",
                               path], capture_output=True, timeout=PTB_TIMEOUT_S, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{PTB_CLASS} exited with {proc.returncode}: {proc.stderr.decode(errors='replace')[-500:]}")
    out = proc.stdout.decode("utf-8", errors="replace").split("\n")
    if len(out) < len(lines) or any(x.strip() for x in out[len(lines):]):
        raise RuntimeError(f"{PTB_CLASS} returned {len(out)} lines for {len(lines)} captions")
    return [" ".join(w for w in line.rstrip().split(" ") if w not in PUNCTUATIONS) for line in out[:len(lines)]]


def python_tokenize(captions: Sequence[str]) -> list[str]:
    """The Java-free tokenisation (:func:`~crab_jax.metrics.ptb_tokenizer.tokenize_caption`)."""
    return [tokenize_caption(c) for c in captions]


def _tokenize(captions: list[str], java: str | None, tokenizer: str) -> tuple[list[str], str]:
    if tokenizer not in ("auto", "java", "python"):
        raise ValueError(f"tokenizer must be 'auto', 'java' or 'python', got {tokenizer!r}")
    if tokenizer == "java" and java is None:
        raise ValueError("tokenizer='java' needs Java on PATH (shutil.which('java') found none)")
    if tokenizer == "python" or java is None:
        return python_tokenize(captions), TOKENIZER_PYTHON
    try:
        return java_tokenize(captions, java), TOKENIZER_JAVA
    except (OSError, subprocess.SubprocessError, RuntimeError) as e:
        if tokenizer == "java":
            raise
        log.warning("the Stanford PTB tokenizer failed (%s); tokenising in pure Python instead", e)
        return python_tokenize(captions), TOKENIZER_PYTHON


def _meteor(gts: dict, res: dict) -> float:
    """pycocoevalcap's METEOR; the jar process is always stopped (its wrapper's lock released, so
    its ``__del__`` cannot block after an error)."""
    from pycocoevalcap.meteor.meteor import Meteor

    meteor = Meteor()
    try:
        score, _ = meteor.compute_score(gts, res)
        return float(score)
    finally:
        if meteor.lock.locked():
            meteor.lock.release()
        meteor.meteor_p.stdin.close()
        meteor.meteor_p.kill()
        meteor.meteor_p.wait()


def _check_inputs(predictions: Mapping, references: Mapping) -> list:
    ids = list(predictions)
    if not ids:
        raise ValueError("caption_scores: no predictions to score")
    missing = [i for i in ids if i not in references]
    extra = [i for i in references if i not in predictions]
    if missing or extra:
        raise ValueError(f"caption_scores: prediction and reference ids differ (without references: "
                         f"{missing[:5]}, without predictions: {extra[:5]})")
    for i in ids:
        if not isinstance(predictions[i], str):
            raise ValueError(f"caption_scores: prediction {i!r} must be a string, got {type(predictions[i]).__name__}")
        refs = references[i]
        if isinstance(refs, str) or not refs or not all(isinstance(r, str) for r in refs):
            raise ValueError(f"caption_scores: references of {i!r} must be a non-empty list of strings, got {refs!r}")
    return ids


def caption_scores(predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]], *,
                   with_meteor: bool = True, tokenizer: str = "auto") -> dict:
    """Corpus-level caption metrics of one prediction per id against its references.

    Args:
      predictions: id -> generated caption.
      references: id -> one or more reference captions (the same ids).
      with_meteor: run METEOR (needs Java; slow to start).
      tokenizer: ``"auto"`` (Java's PTB tokenizer when Java is present, else pure Python),
        ``"java"`` or ``"python"``.
    Returns:
      ``{"BLEU@1".."BLEU@4", "METEOR" (None when unavailable or not asked for), "ROUGE-L", "CIDEr",
      "n": number of captions, "tokenizer": which tokenisation ran}``.
    Raises:
      ValueError: empty input, mismatched ids, non-string captions or an empty reference list.
    """
    ids = _check_inputs(predictions, references)
    _require_pycocoevalcap()
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    java = shutil.which("java")
    flat = [predictions[i] for i in ids] + [r for i in ids for r in references[i]]
    tokens, used = _tokenize(flat, java, tokenizer)
    res = {i: [tokens[k]] for k, i in enumerate(ids)}
    gts, pos = {}, len(ids)
    for i in ids:
        gts[i] = tokens[pos: pos + len(references[i])]
        pos += len(references[i])

    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    meteor = None
    if not with_meteor:
        log.info("METEOR not computed (with_meteor=False)")
    elif java is None:
        log.warning("METEOR unavailable: it runs pycocoevalcap's meteor-1.5.jar and no 'java' is on PATH")
    else:
        try:
            meteor = _meteor(gts, res)
        except Exception as e:  # the jar's failures surface as broken pipes / unparsable output
            log.warning("METEOR unavailable: meteor-1.5.jar failed (%s: %s)", type(e).__name__, e)
    out = {f"BLEU@{k + 1}": float(b) for k, b in enumerate(bleu)}
    out.update({"METEOR": meteor, "ROUGE-L": float(rouge), "CIDEr": float(cider), "n": len(ids), "tokenizer": used})
    return out
