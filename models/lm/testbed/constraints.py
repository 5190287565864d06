"""A Boolean constraint on testbed traces, for exact constrained generation.

``copies_the_prompt(prompt, text, ended=False)``: every line has the form ``a op b = c``
with ``a`` the previous line's result (the start value on the first line) and ``op b`` the
prompt's operation of that line, then one answer line ``A c`` copying the last result; the
end token only after it. It is a regular language per problem, checked on prefixes: a
partial last line must be able to grow into an allowed one. The arithmetic (``c``) is left
free: the constraint removes copying slips, not calculation ones.
"""

from __future__ import annotations

import re

from . import tasks

__all__ = ["copies_the_prompt"]

_RESULT = re.compile(r"-?\d*")


def _partial_number(text: str) -> bool:
    """Could ``text`` begin a (possibly negative) integer?"""
    return bool(_RESULT.fullmatch(text)) and text not in ("-0",) and not text.startswith("00")


def _line_ok(line: str, left: int, operation, complete: bool) -> bool:
    head = f"{left}{operation[0]}{operation[1]}="
    if not complete:
        return head.startswith(line) or (line.startswith(head)
                                         and _partial_number(line[len(head):]))
    return line.startswith(head) and bool(re.fullmatch(r"-?\d+", line[len(head):]))


def copies_the_prompt(prompt: str, text: str, ended: bool = False) -> bool:
    """The constraint (module docstring) on ``text`` generated after ``prompt``."""
    problem = tasks.parse_prompt(prompt)
    lines = text.split("\n")
    complete, partial = lines[:-1], lines[-1]
    left = problem.start
    for index, line in enumerate(complete):
        if index < problem.difficulty:
            if not _line_ok(line, left, problem.operations[index], complete=True):
                return False
            left = int(line.split("=")[1])
        elif index == problem.difficulty:
            if line != f"A {left}":
                return False
        else:
            return False  # nothing after the answer line
    position = len(complete)
    if ended:
        return partial == "" and position == problem.difficulty + 1
    if position < problem.difficulty:
        return _line_ok(partial, left, problem.operations[position], complete=False)
    if position == problem.difficulty:
        return f"A {left}".startswith(partial)
    return partial == ""
