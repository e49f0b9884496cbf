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
from transforms.derived_cache import derived

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
    the model decompressed in one call and its arrays read in place. Its own loader streams the
    LZMA file in about 700 small reads, and a load on a background thread (:func:`prefetch`)
    then waits for the GIL after each of them (0.9 s instead of 0.4 s in the demo); one call
    releases the GIL once for the whole decompression (0.4 s of CPU), and the decompressed
    model is kept in the per-user cache of :mod:`transforms.derived_cache` (zstd: 0.06 s to read
    back). It is an ``.npz`` of 68 MB, whose arrays are then views of it (:func:`_npz_arrays`)
    instead of copies checked again by zipfile (LZMA or the cache checked the bytes already).
    Same arrays (tests/test_background.py compares them)."""
    import lzma

    from py3langid.langid import MODEL_DIR, MODEL_FILE, LanguageIdentifier
    from py3langid.modelio import _to_array

    data = _npz_arrays(derived("py3langid-model", MODEL_DIR / MODEL_FILE, lzma.decompress))
    return LanguageIdentifier(
        data["ptc"],
        data["pc"],
        data["classes"].tolist(),
        _to_array(data["nextmove"]),
        data["out_feat"].tolist(),
        norm_probs=True,
        tk_row=_to_array(data["nextmove_row"]),
    )


#: numpy's reader of each ``.npy`` header version.
_NPY_HEADERS = {(1, 0): "read_array_header_1_0", (2, 0): "read_array_header_2_0"}


def _npz_arrays(packed: bytes) -> dict:
    """The arrays of an uncompressed ``.npz`` (a zip of ``.npy`` files stored as they are), as
    read-only views of ``packed``: what ``numpy.load`` gives, without copying each member or
    computing its CRC. A compressed member or an array of objects raises ``ValueError``."""
    import io
    import struct
    import zipfile

    import numpy as np

    arrays = {}
    with zipfile.ZipFile(io.BytesIO(packed)) as archive:
        for info in archive.infolist():
            if info.compress_type != zipfile.ZIP_STORED:
                raise ValueError(f"{info.filename}: compressed member of the language model")
            name_size, extra_size = struct.unpack_from("<HH", packed, info.header_offset + 26)
            start = info.header_offset + 30 + name_size + extra_size  # after the local file header
            header = io.BytesIO(packed[start : start + 4096])
            read_header = _NPY_HEADERS.get(np.lib.format.read_magic(header))
            if read_header is None:
                raise ValueError(f"{info.filename}: unknown .npy version in the language model")
            shape, fortran_order, dtype = getattr(np.lib.format, read_header)(header)
            if dtype.hasobject:
                raise ValueError(f"{info.filename}: array of objects in the language model")
            count = int(np.prod(shape, dtype=np.int64))
            flat = np.frombuffer(packed, dtype=dtype, count=count, offset=start + header.tell())
            arrays[info.filename.removesuffix(".npy")] = flat.reshape(shape, order="F" if fortran_order else "C")
    return arrays


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
