"""Background knowledge: the symbolic programs that A-NeSI's inference model approximates.

A program ``c`` maps ``num_inputs`` symbols ``w_j in {0, ..., input_arity - 1}`` (here the ten
digit classes) to an output ``y = c(w)`` written as a tuple of ``num_outputs`` digits, most
significant first, digit ``i`` taking ``output_sizes[i]`` values. Given independent beliefs
``P_j`` over the symbols, the quantity A-NeSI approximates is the weighted model count

    p(y | P) = sum_w  prod_j P_j(w_j)  [c(w) = y],

whose exact computation costs ``input_arity ** num_inputs`` terms (:mod:`.exact`).

Decoding order. The inference model factorises the output over ``decode_order``, a
permutation of the positions (most significant first unless the program says otherwise).
Addition decodes least significant first: then each sum digit is a function of its column's
two symbols and of the carry into it, which the lower digits already decoded and their
columns' beliefs determine, so every factor is local. Most significant first, the first factor
(the final carry) depends on every column through the carry chain, and the network cannot
learn that at N = 15 (measured: 0.04 sum accuracy against 0.10 reachable).

Symbolic pruning. ``prune(prefix, position)`` says, given the digits at the positions decoded
before ``position`` (written ``y_<i`` below, "before" in ``decode_order``), which digits
``y_i`` can still be produced by some input, i.e. ``{d : exists w, c(w)_{<i} = y_{<i},
c(w)_i = d}``. The inference model masks its logits with it, so it gives probability exactly 0
to every output the program cannot produce. Pruning must be exact for every prefix the program
can produce (never exclude a reachable digit, always exclude an unreachable one); the tests
check this against enumeration.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar

import jax.numpy as jnp
from jaxtyping import Array, Bool, Int

__all__ = ["AbstractProgram", "Addition", "SumOfDigits", "output_masks", "digits_to_int",
           "int_to_digits", "program_from_json", "PROGRAMS"]

INPUT_ARITY = 10


class AbstractProgram(abc.ABC):
    """The background-knowledge protocol (see the module docstring).

    Concrete programs are frozen dataclasses (hashable, so they can be static arguments of a
    jitted function) with the class attribute ``name`` and the properties below.
    """

    name: ClassVar[str]
    input_arity: ClassVar[int] = INPUT_ARITY

    num_inputs: int  # how many symbols (images) the program reads

    @property
    @abc.abstractmethod
    def output_sizes(self) -> tuple[int, ...]:
        """The number of values of each output digit, most significant first."""

    @property
    def num_outputs(self) -> int:
        return len(self.output_sizes)

    @property
    def decode_order(self) -> tuple[int, ...]:
        """The order in which the inference model decodes the output positions."""
        return tuple(range(self.num_outputs))

    @abc.abstractmethod
    def __call__(self, symbols: Int[Array, "*batch num_inputs"]
                 ) -> Int[Array, "*batch num_outputs"]:
        """The program ``c(w)``: the output digits, most significant first."""

    @abc.abstractmethod
    def prune(self, prefix: Int[Array, "*batch num_outputs"],
              position: int) -> Bool[Array, "*batch 10"]:
        """Which digits ``y_position`` remain possible given the digits of ``prefix`` at the
        positions before ``position`` in :attr:`decode_order`.

        The other entries of ``prefix`` are ignored. ``position`` is static.
        """

    def settings(self) -> dict[str, Any]:
        """The constructor arguments (what a checkpoint records)."""
        return dataclasses.asdict(self)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, **self.settings()}

    def describe(self) -> str:
        arguments = ", ".join(f"{k}={v}" for k, v in self.settings().items())
        return f"{self.name}({arguments})"


def _check_count(value: int, argument: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{argument} must be an integer >= 1, got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class Addition(AbstractProgram):
    """Addition of two ``num_digits``-digit numbers, ``A + B``.

    Inputs: ``symbols[..., :N]`` are the digits of ``A`` and ``symbols[..., N:]`` those of
    ``B``, most significant first (``2N`` inputs). Output: the ``N + 1`` digits of the sum, most
    significant first; the leading digit is the final carry, so ``output_sizes = (2, 10, ...)``.

    Pruning in closed form from the carries. The sum lies in ``[0, 2 * 10^N - 2]`` and every
    value in it is reachable (``S < 10^N``: ``A = S, B = 0``; otherwise ``A = 10^N - 1,
    B = S - 10^N + 1``). So the leading digit (the carry out of the top column) is 0 or 1;
    when it is 1 the remaining digits are ``A + B - 10^N <= 10^N - 2`` and cannot all be 9.
    Decoded least significant first (:attr:`decode_order`), every digit but the carry is free,
    and the carry is 0 or 1, and only 0 after ``N`` nines.
    """

    num_digits: int
    name: ClassVar[str] = "addition"

    def __post_init__(self):
        _check_count(self.num_digits, "num_digits")

    @property
    def num_inputs(self) -> int:
        return 2 * self.num_digits

    @property
    def output_sizes(self) -> tuple[int, ...]:
        return (2,) + (10,) * self.num_digits

    @property
    def decode_order(self) -> tuple[int, ...]:
        return tuple(reversed(range(self.num_digits + 1)))

    def __call__(self, symbols):
        n = self.num_digits
        symbols = jnp.asarray(symbols)
        a, b = symbols[..., :n], symbols[..., n:]
        carry = jnp.zeros(symbols.shape[:-1], symbols.dtype)
        digits = []
        # Column by column from the least significant: no integer overflow for any N.
        for i in reversed(range(n)):
            column = a[..., i] + b[..., i] + carry
            digits.append(column % 10)
            carry = column // 10
        digits.append(carry)
        return jnp.stack(digits[::-1], axis=-1)

    def prune(self, prefix, position):
        prefix = jnp.asarray(prefix)
        values = jnp.arange(10)
        batch = prefix.shape[:-1]
        if position > 0:
            return jnp.ones((*batch, 10), bool)
        # The carry, decoded last: 1 is impossible after N nines (1 9...9 > 2 (10^N - 1)).
        nines = jnp.all(prefix[..., 1:] == 9, axis=-1)
        return (values < 2) & ~(nines[..., None] & (values == 1))


@dataclasses.dataclass(frozen=True)
class SumOfDigits(AbstractProgram):
    """The sum of ``num_inputs`` digits, written in decimal (``D = len(str(9 K))`` digits).

    Every value in ``[0, 9 K]`` is reachable, so pruning compares the prefix with the digits of
    the maximum ``M = 9 K``: while the prefix equals ``M``'s, the next digit cannot exceed
    ``M``'s next digit; once it is smaller, every digit is free.
    """

    num_inputs: int
    name: ClassVar[str] = "sum_of_digits"

    def __post_init__(self):
        _check_count(self.num_inputs, "num_inputs")

    @property
    def _max_digits(self) -> tuple[int, ...]:
        return tuple(int(c) for c in str(9 * self.num_inputs))

    @property
    def output_sizes(self) -> tuple[int, ...]:
        top = self._max_digits
        return (top[0] + 1,) + (10,) * (len(top) - 1)

    def __call__(self, symbols):
        total = jnp.sum(jnp.asarray(symbols), axis=-1)
        powers = [10 ** k for k in reversed(range(self.num_outputs))]
        return jnp.stack([(total // p) % 10 for p in powers], axis=-1)

    def prune(self, prefix, position):
        prefix = jnp.asarray(prefix)
        top = jnp.asarray(self._max_digits)
        tight = jnp.all(prefix[..., :position] == top[:position], axis=-1)
        return ~tight[..., None] | (jnp.arange(10) <= top[position])


PROGRAMS: dict[str, type[AbstractProgram]] = {"addition": Addition, "sum_of_digits": SumOfDigits}


def program_from_json(data: dict[str, Any]) -> AbstractProgram:
    """The program a checkpoint recorded with :meth:`AbstractProgram.to_json`."""
    data = dict(data)
    name = data.pop("name", None)
    if name not in PROGRAMS:
        raise ValueError(f"unknown program {name!r}; known: {sorted(PROGRAMS)}")
    return PROGRAMS[name](**data)


def output_masks(program: AbstractProgram,
                 outputs: Int[Array, "*batch num_outputs"]) -> Bool[Array, "*batch num_outputs 10"]:
    """The pruning masks of every position, each from the digits of ``outputs`` decoded before
    it."""
    return jnp.stack([program.prune(outputs, i) for i in range(program.num_outputs)], axis=-2)


def digits_to_int(digits) -> int:
    """Most-significant-first digits to a Python integer (exact for any length)."""
    value = 0
    for d in list(map(int, digits)):
        value = 10 * value + d
    return value


def int_to_digits(value: int, num_digits: int) -> list[int]:
    """A non-negative integer to ``num_digits`` digits, most significant first."""
    if value < 0 or value >= 10 ** num_digits:
        raise ValueError(f"{value} does not have {num_digits} decimal digits")
    return [int(c) for c in str(value).zfill(num_digits)]
