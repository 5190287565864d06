"""Arithmetic chains solved one operation per line, with an exact checker.

A problem is a start value and a list of operations, applied left to right::

    Q 17 +8 *3 -25
    17+8=25
    25*3=75
    75-25=50
    A 50

Difficulty is the number of operations. Values stay in 0..99 on the correct path. Each
line of the solution is one reasoning step; the answer line ends the trace.

``noisy_solution`` writes solutions with realistic slips mixed in (a carry dropped, the
wrong operator applied, an operand misread, a result miscopied); later steps then carry the
mistake forward, as a person's working would. The chance of a slip grows with the depth of
the step (``slip_probability``: 0.5% at the first step, growing with the square of the
depth), a simple model of compounding fatigue, so that a model trained on such traces gets
worse faster than geometrically with difficulty: about 98% of the traces of 2 steps are
correct, 17% of those of 8.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

MAX_VALUE = 99
_OPS = ("+", "-", "*")
_LINE = re.compile(r"^(-?\d+)([+\-*])(\d+)=(-?\d+)$")
_PROMPT = re.compile(r"Q (\d+)((?: [+\-*]\d+)+)\n")


@dataclasses.dataclass(frozen=True)
class Problem:
    """A start value and operations ``((op, operand), ...)``."""

    start: int
    operations: tuple[tuple[str, int], ...]

    @property
    def difficulty(self) -> int:
        return len(self.operations)

    @property
    def prompt(self) -> str:
        ops = " ".join(f"{op}{operand}" for op, operand in self.operations)
        return f"Q {self.start} {ops}\n"

    def values(self) -> list[int]:
        """The running value after each operation (the last one is the answer)."""
        values, value = [], self.start
        for op, operand in self.operations:
            value = apply(op, value, operand)
            values.append(value)
        return values

    @property
    def answer(self) -> int:
        return self.values()[-1]

    def solution(self) -> str:
        """The correct trace (without the prompt)."""
        lines, value = [], self.start
        for (op, operand), result in zip(self.operations, self.values(), strict=True):
            lines.append(f"{value}{op}{operand}={result}")
            value = result
        return "\n".join(lines) + f"\nA {value}\n"


def parse_prompt(prompt: str) -> Problem:
    """The problem whose ``Problem.prompt`` is ``prompt`` (its inverse).

    Raises:
        ValueError: naming the prompt, when it is not ``"Q <start> <op><operand> ...\\n"``
            with at least one operation (``op`` one of ``+ - *``, numbers without sign).
    """
    match = _PROMPT.fullmatch(prompt) if isinstance(prompt, str) else None
    if match is None:
        raise ValueError(
            f'Expected a prompt like "Q 17 +8 *3\\n" (a start value, at least one operation '
            f"and a final newline), got {prompt!r}."
        )
    operations = tuple((part[0], int(part[1:])) for part in match[2].split())
    problem = Problem(int(match[1]), operations)
    if problem.prompt != prompt:  # leading zeros, say: "Q 07 +1\n"
        raise ValueError(
            f"Expected a prompt in canonical form {problem.prompt!r}, got {prompt!r}."
        )
    return problem


def apply(op: str, value: int, operand: int) -> int:
    if op == "+":
        return value + operand
    if op == "-":
        return value - operand
    if op == "*":
        return value * operand
    raise ValueError(f"Expected op in {_OPS}, got {op!r}.")


def generate(rng: np.random.Generator, difficulty: int) -> Problem:
    """A random problem with ``difficulty`` operations whose path stays in 0..99."""
    if difficulty < 1:
        raise ValueError(f"Expected difficulty >= 1, got {difficulty}.")
    start = int(rng.integers(1, 31))
    value, operations = start, []
    for _ in range(difficulty):
        choices = []
        if value <= MAX_VALUE - 1:
            choices.append("+")
        if value >= 1:
            choices.append("-")
        if 2 <= value <= MAX_VALUE // 2:
            choices.append("*")
        op = choices[rng.integers(len(choices))]
        if op == "+":
            operand = int(rng.integers(1, min(30, MAX_VALUE - value) + 1))
        elif op == "-":
            operand = int(rng.integers(1, min(30, value) + 1))
        else:
            operand = int(rng.integers(2, min(4, MAX_VALUE // value) + 1))
        operations.append((op, operand))
        value = apply(op, value, operand)
    return Problem(start, tuple(operations))


def slip_probability(step: int) -> float:
    """Chance of a slip at 0-based ``step``: ``0.005 + 0.01 step^2`` (0.5% .. 49.5% at 7)."""
    return 0.005 + 0.01 * step**2


def _slip(rng: np.random.Generator, value: int, op: str, operand: int) -> tuple[str, int, int]:
    """One realistic mistake: returns the (op, operand, result) actually written."""
    kind = rng.integers(4)
    correct = apply(op, value, operand)
    if kind == 0:  # carry or borrow dropped: off by one or by ten
        return op, operand, correct + int(rng.choice([-10, -1, 1, 10]))
    if kind == 1:  # wrong operator applied, the right one written
        other = {"+": "-", "-": "+", "*": "+"}[op]
        return op, operand, apply(other, value, operand)
    if kind == 2:  # operand misread, and the line computed consistently with it
        misread = max(1, operand + int(rng.choice([-1, 1])))
        if misread == operand:
            misread += 1
        return op, misread, apply(op, value, misread)
    # digits of the result swapped (or a one-digit result miscopied)
    text = str(abs(correct))
    swapped = int(text[::-1]) if len(text) > 1 and text[0] != text[-1] else correct + 2
    return op, operand, swapped if correct >= 0 else -swapped


def noisy_solution(
    rng: np.random.Generator,
    problem: Problem,
    *,
    slip_scale: float = 1.0,
    slip_rate: float | None = None,
) -> str:
    """A solution with slips mixed in at ``slip_scale * slip_probability(step)``.

    Args:
        slip_rate: when given, every step slips with this probability instead, whatever its
            depth (the learned PRM's training traces: with depth-dependent slips, early wrong
            steps are rare and a PRM can score well by counting lines).
    """
    if slip_rate is not None and not 0 <= slip_rate <= 1:
        raise ValueError(f"Expected slip_rate in [0, 1], got {slip_rate}.")
    lines, value = [], problem.start
    for step, (op, operand) in enumerate(problem.operations):
        written_op, written_operand, result = op, operand, apply(op, value, operand)
        chance = slip_scale * slip_probability(step) if slip_rate is None else slip_rate
        if rng.random() < chance:
            written_op, written_operand, result = _slip(rng, value, op, operand)
        lines.append(f"{value}{written_op}{written_operand}={result}")
        value = result
    return "\n".join(lines) + f"\nA {value}\n"


def parse_answer(trace: str) -> int | None:
    """The value on the trace's ``A <n>`` line, or None when there is none."""
    for line in trace.splitlines():
        match = re.fullmatch(r"A (-?\d+)", line.strip())
        if match:
            return int(match.group(1))
    return None


def is_correct(problem: Problem, trace: str) -> bool:
    """Exact answer check."""
    return parse_answer(trace) == problem.answer


def step_labels(problem: Problem, trace: str) -> list[bool]:
    """For each complete line of ``trace``: is everything up to and including it correct?

    A step is correct when it is exactly the reference line: the previous correct value,
    the problem's operation and operand, and the right result. The answer line is correct
    when it states the right answer after correct steps. Once a step is wrong, every later
    prefix is wrong (the path has left the reference).
    """
    reference = problem.solution().splitlines()
    lines = trace.split("\n")[:-1]  # the text after the last newline is an unfinished step
    labels, ok = [], True
    for index, line in enumerate(lines):
        ok = ok and index < len(reference) and line == reference[index]
        labels.append(ok)
    return labels


def step_is_valid(line: str, previous_value: int, operation: tuple[str, int]) -> bool:
    """Local check of one line against the value before it and the intended operation."""
    match = _LINE.fullmatch(line)
    if not match:
        return False
    left, op, operand, result = int(match[1]), match[2], int(match[3]), int(match[4])
    return (left, op, operand) == (previous_value, *operation) and result == apply(
        op, left, operand
    )
