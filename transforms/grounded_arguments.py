"""Call arguments that carry a contact or a date the conversation never gave.

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

A date is the same kind of value when nothing said which year it is: glaive's conversations
carry no current date, and its calls make one up (``"current_date": "2022-03-15"`` for "how old
am I today?", ``"date": "2022-04-15"`` for "my meeting tomorrow"); the agent should ask, or use
a tool that knows the date. An ISO date in the arguments (``2022-03-15``, also inside
``2022-03-15T10:00:00``) counts as given when an earlier message writes its year, or the year
before or after it, as a number: "May 15, 1990" grounds ``1990-05-15``; "in the year of 2011"
grounds the bounds ``2010-12-31`` and ``2012-01-01``; "last year" after a ``date`` command
that printed 2023 grounds ``2022-12-21``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

#: An email address, in any script (``\\w`` is Unicode): ``老板@公司.com`` is one too.
EMAIL = re.compile(r"(?<![\w.%+\-@\u00b7])\w[\w.+\-\u00b7]*@\w[\w\-]*(?:\.\w[\w\-]*)+")
_YEAR = r"(?:1[89]|20)\d\d"  # 1800-2099
#: A calendar date as ISO 8601 writes it, the year captured.
ISO_DATE = re.compile(rf"(?<!\d)({_YEAR})-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])(?!\d)")
#: A year written as a number of its own.
YEAR = re.compile(rf"(?<!\d){_YEAR}(?!\d)")


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


def ungrounded_dates(arguments: Any, earlier: str) -> list[str]:
    """The ISO dates in ``arguments`` whose year ``earlier`` (the conversation before the call)
    never writes as a number of its own, nor the year before or after it."""
    given = {int(year) for year in YEAR.findall(earlier)}
    missing: list[str] = []
    for text in argument_strings(arguments):
        for match in ISO_DATE.finditer(text):
            date, year = match.group(0), int(match.group(1))
            if date not in missing and not given & {year - 1, year, year + 1}:
                missing.append(date)
    return missing


def ungrounded_call(name: str, arguments: Any, earlier: Iterable[str]) -> str | None:
    """Why a call to ``name`` with ``arguments`` sends to an email address, or uses a date, that
    none of the ``earlier`` texts (the messages before the call) gives, or ``None``. The texts are
    read only for a call that has an ``@`` or an ISO date in an argument (most calls have
    neither)."""
    texts = list(argument_strings(arguments))
    has_address = any("@" in text for text in texts)
    has_date = any(ISO_DATE.search(text) for text in texts)
    if not has_address and not has_date:
        return None
    seen = "\n".join(earlier)
    reasons = []
    if has_address and (addresses := ungrounded_emails(arguments, seen)):
        reasons.append(f"sends to {json.dumps(addresses, ensure_ascii=False)}, which no earlier turn gives")
    if has_date and (dates := ungrounded_dates(arguments, seen)):
        reasons.append(f"uses the date {json.dumps(dates)}, whose year no earlier turn gives")
    return f"call to {name!r} " + " and ".join(reasons) if reasons else None
