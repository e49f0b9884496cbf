"""Fenced Python code whose indentation was lost.

Some sources flattened their texts' whitespace (glaive's demos: ``def factorial(n):`` / `` if n ==
0:`` / `` return 1``, every line one space in). In Python, indentation is syntax, so such a block
is code that does not run, and a model trained to write it learns to write broken code. Only the
verifiable case counts: a fenced block tagged ``python``/``py``/``python3`` that, dedented, fails
to parse because a block opener's next code line is not indented further than the opener.
Fragments (a block that does not parse for another reason) and placeholders (an opener followed
only by a comment, ``def f():`` / ``    # your code here``) are not judged.
"""

from __future__ import annotations

import ast
import re
import textwrap
import warnings
from collections.abc import Iterator

PYTHON_BLOCK = re.compile(r"```[ \t]*(?:python3?|py)[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
_OPENER_LINE = re.compile(r"on line (\d+)")


def python_blocks(text: str) -> Iterator[str]:
    """The code of every fenced Python block in ``text``."""
    for match in PYTHON_BLOCK.finditer(text):
        yield match.group(1)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def collapsed_indentation(code: str) -> bool:
    """Whether ``code`` fails to parse only because a block's body is not indented under its
    opener (``for x in y:`` followed by a code line at the same or a lower indentation)."""
    code = textwrap.dedent(code)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences in the code are not our concern
            ast.parse(code)
        return False
    except IndentationError as exc:
        if "expected an indented block" not in exc.msg or exc.lineno is None:
            return False
        lines = code.split("\n")
        opener = _OPENER_LINE.search(exc.msg)
        if opener is None or exc.lineno > len(lines):
            return False
        body = lines[exc.lineno - 1]
        if not body.strip() or body.lstrip().startswith("#"):
            return False
        return _indent(body) <= _indent(lines[int(opener.group(1)) - 1])
    except (SyntaxError, ValueError):
        return False


def has_collapsed_python(text: str) -> bool:
    """Whether ``text`` holds a fenced Python block whose indentation was lost."""
    return "```" in text and any(collapsed_indentation(code) for code in python_blocks(text))


__all__ = ["PYTHON_BLOCK", "collapsed_indentation", "has_collapsed_python", "python_blocks"]
