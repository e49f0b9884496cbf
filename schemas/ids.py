"""Stable content-hash ids.

Every id agentmill assigns is a hash of the parts that define the record, so a rerun on the same
inputs assigns the same ids on every runner and worker count.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

ID_HEX_CHARS = 32


def canonical_json(value: Any) -> str:
    """Compact JSON with sorted keys: the byte form hashed for ids and config hashes."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def content_hash(value: Any, length: int = ID_HEX_CHARS) -> str:
    """Hex sha256 of the canonical JSON of ``value``, cut to ``length`` characters."""
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()[:length]


def stable_id(source: str, source_id: str, derivation: str = "", content: str = "") -> str:
    """Id of a record: a hash of (source, source id, derivation) and, optionally, a content digest.

    The content digest tells apart records that share a source id (e.g. several rollouts of one
    task) while identical records keep identical ids.
    """
    return content_hash([source, source_id, derivation, content])
