"""Call arguments that carry a contact the conversation never gave.

An email address is a value an agent must be told: the user gives it, or a tool's result
shows it. A call whose arguments hold an address that no earlier turn contains teaches the
model to make one up. The released data has three kinds:

- glaive's Chinese demos were machine-translated, arguments included: the user writes
  ``boss@company.com`` and the call sends to ``老板@公司.com``;
- the source model rewrote the address: the user gives ``johndoe@example.com`` and the call
  uses ``john_doe@example.com``;
- placeholders: ``yourname@yourdomain.com`` for an address the user never gave (the agent
  should ask for it).

Only whole addresses count (a local part that starts with a letter or digit, a domain with a
dot), so SQL ``LIKE '%@gmail.com'`` patterns and regexes are no addresses. The comparison is
case-insensitive, against the text of every earlier message (system, user, tool, assistant).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

#: An email address, in any script (``\\w`` is Unicode): ``老板@公司.com`` is one too.
EMAIL = re.compile(r"(?<![\w.%+\-@\u00b7])\w[\w.+\-\u00b7]*@\w[\w\-]*(?:\.\w[\w\-]*)+")


def argument_strings(arguments: Any) -> Iterable[str]:
    """Every string value of a call's arguments (nested lists and objects included)."""
    if isinstance(arguments, str):
        yield arguments
    elif isinstance(arguments, dict):
        for value in arguments.values():
            yield from argument_strings(value)
    elif isinstance(arguments, list):
        for value in arguments:
            yield from argument_strings(value)


def ungrounded_emails(arguments: Any, earlier: str) -> list[str]:
    """The email addresses in ``arguments`` that ``earlier`` (the conversation before the call)
    does not contain, case-insensitively; trailing dots are not part of an address."""
    seen = earlier.lower()
    missing: list[str] = []
    for text in argument_strings(arguments):
        for address in EMAIL.findall(text):
            address = address.rstrip(".")
            if address.lower() not in seen and address not in missing:
                missing.append(address)
    return missing


def ungrounded_call(name: str, arguments: Any, earlier: Iterable[str]) -> str | None:
    """Why a call to ``name`` with ``arguments`` sends to an email address that none of the
    ``earlier`` texts (the messages before the call) gives, or ``None``. The texts are read
    only for a call that has an ``@`` in an argument (most calls have none)."""
    if not any("@" in text for text in argument_strings(arguments)):
        return None
    missing = ungrounded_emails(arguments, "\n".join(earlier))
    if not missing:
        return None
    return f"call to {name!r} sends to {json.dumps(missing, ensure_ascii=False)}, which no earlier turn gives"
