"""Language identification of short texts, offline.

Uses ``py3langid`` (a maintained, faster fork of langid.py): its model ships inside the wheel
(about 4 MB), so nothing is downloaded at run time; it is deterministic and takes about 35 us
per short text. Texts in CJK scripts are decided by script first (more reliable than n-gram
models on a few characters). A text too short or too mixed to tell gives ``None``: callers
treat ``None`` as "unknown", never as a mismatch.
"""

from __future__ import annotations

import functools
import re

#: Code blocks, inline code, URLs, JSON-ish and markup: not natural language.
_NOISE = re.compile(r"```.*?(```|$)|`[^`]*`|https?://\S+|<[^>]{0,200}>|\{[^{}]*\}|\[[^\[\]]*\]", re.DOTALL)
_HAN = re.compile(r"[\u4e00-\u9fff\u3400-\u4dbf]")
_KANA = re.compile(r"[\u3040-\u30ff]")
_HANGUL = re.compile(r"[\uac00-\ud7af]")
_LETTER = re.compile(r"[^\W\d_]", re.UNICODE)

MIN_LETTERS = 20
MIN_CONFIDENCE = 0.9
#: Characters of a text the model reads (its cost grows with the length; the start decides).
MAX_CHARS = 200


@functools.cache
def _identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def natural_text(text: str) -> str:
    """``text`` without code, URLs, markup and bracketed or braced spans."""
    return _NOISE.sub(" ", text)


def detect_language(text: str, min_letters: int = MIN_LETTERS, min_confidence: float = MIN_CONFIDENCE) -> str | None:
    """ISO 639-1 code of the language of ``text``, or ``None`` when it cannot be told.

    Only the first ``MAX_CHARS`` characters of natural text are read. CJK scripts are decided by
    script share (``zh``, ``ja``, ``ko``) when they make up at least
    30 % of the letters; otherwise the langid model decides, and only when the text has at least
    ``min_letters`` letters and the model's normalised probability is at least ``min_confidence``.
    """
    text = natural_text(text[: 4 * MAX_CHARS])[:MAX_CHARS]
    letters = len(_LETTER.findall(text))
    if letters == 0:
        return None
    kana, hangul, han = len(_KANA.findall(text)), len(_HANGUL.findall(text)), len(_HAN.findall(text))
    if kana / letters >= 0.1:
        return "ja"
    if hangul / letters >= 0.3:
        return "ko"
    if han / letters >= 0.3:
        return "zh" if han >= 4 else None
    if letters < min_letters:
        return None
    language, probability = _identifier().classify(text)
    return language if probability >= min_confidence else None
