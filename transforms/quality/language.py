"""Language identification of short texts, offline.

Uses ``py3langid`` (a maintained, faster fork of langid.py): its model ships inside the wheel
(about 4 MB), so nothing is downloaded at run time; it is deterministic and takes about 35 us
per short text. Texts in CJK scripts are decided by script first (more reliable than n-gram
models on a few characters). A text too short or too mixed to tell gives ``None``: callers
treat ``None`` as "unknown", never as a mismatch.
"""

from __future__ import annotations

import re
import threading

from transforms import background

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


_loaded: list = []
_loading = threading.Lock()


def _identifier():
    """The model, loaded once per process (thread-safe: :func:`prefetch` may be loading it)."""
    if not _loaded:
        with _loading:
            if not _loaded:
                _loaded.append(_load_identifier())
    return _loaded[0]


def _load_identifier():
    """py3langid's ``LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)``, with
    the model decompressed in one call. Its own loader streams the LZMA file in about 700 small
    reads, and a load on a background thread (:func:`prefetch`) then waits for the GIL after each
    of them (0.9 s instead of 0.4 s in the demo); one call releases the GIL once for the whole
    decompression. Same arrays (tests/test_background.py compares them)."""
    import io
    import lzma

    import numpy as np
    from py3langid.langid import MODEL_DIR, MODEL_FILE, LanguageIdentifier
    from py3langid.modelio import _to_array

    packed = lzma.decompress((MODEL_DIR / MODEL_FILE).read_bytes())
    with np.load(io.BytesIO(packed), allow_pickle=False) as data:
        return LanguageIdentifier(
            np.asarray(data["ptc"]),
            np.asarray(data["pc"]),
            data["classes"].tolist(),
            _to_array(data["nextmove"]),
            data["out_feat"].tolist(),
            norm_probs=True,
            tk_row=_to_array(data["nextmove_row"]),
        )


def prefetch() -> None:
    """Start loading the model on a background thread (:mod:`transforms.background`): about
    0.4 s, most of it LZMA decompression of the 68 MB model, which releases the GIL."""
    background.start("language model", _identifier)


def natural_text(text: str) -> str:
    """``text`` without code, URLs, markup and bracketed or braced spans."""
    return _NOISE.sub(" ", text)


#: Languages :func:`detect_language` tells by script alone (no model).
SCRIPT_LANGUAGES = frozenset({"zh", "ja", "ko"})


def detect_language(
    text: str, min_letters: int = MIN_LETTERS, min_confidence: float = MIN_CONFIDENCE, scripts_only: bool = False
) -> str | None:
    """ISO 639-1 code of the language of ``text``, or ``None`` when it cannot be told.

    Only the first ``MAX_CHARS`` characters of natural text are read. CJK scripts are decided by
    script share (``zh``, ``ja``, ``ko``) when they make up at least
    30 % of the letters; otherwise the langid model decides, and only when the text has at least
    ``min_letters`` letters and the model's normalised probability is at least ``min_confidence``.
    ``scripts_only`` stops before the model (for callers that only need :data:`SCRIPT_LANGUAGES`).
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
    if scripts_only or letters < min_letters:
        return None
    language, probability = _identifier().classify(text)
    return language if probability >= min_confidence else None
