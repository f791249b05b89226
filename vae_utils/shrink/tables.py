"""The lookup tables of the integer networks, built with Python integers only, so that every machine builds the
same tables bit for bit (Chapter 7).

A float ``exp`` or ``erf`` comes from the platform's maths library and may differ in its last bit between
machines; rounded to a table entry, such a difference can flip the entry. So no table here touches a float:
each is a series summed in fixed point with ``P = 256`` fractional bits (``e**(-1/256)`` by its Taylor series,
then its powers; the normal CDF by the Taylor series of ``erf``, with ``1 / sqrt(2 pi)`` from the digits of pi
written below), and rounded once to the table's resolution. The series' own error is below ``2**-200``.

Every table samples its function every ``2**-8`` (``GRID_BITS``) and is read with linear interpolation from an
argument in units of ``2**-16`` (:func:`lookup`): integer operations only, and monotone wherever the table is.
"""

from __future__ import annotations

import functools
import math

import torch

GRID_BITS = 8
"""Tables sample their function at x = i / 2**8."""
ARG_BITS = 16
"""Table arguments are integers in units of 2**-16."""
SIGMOID_BITS = 24
"""sigmoid(t) in units of 2**-24: the resolution of constriction's probabilities."""
EXP_NEG_BITS = 30
"""exp(-x), x >= 0, in units of 2**-30."""
EXP_BITS = 16
"""exp(x) in units of 2**-16 (for 1 / sigma and 1 / scale)."""
PHI_BITS = 40
"""The normal CDF in units of 2**-40: fine enough for its tails, which the posterior windows reach."""
SIGMOID_MAX = 24.0
"""sigmoid(24) is within 2**-34 of 1: past it, the table is flat."""
EXP_NEG_MAX = 24.0
EXP_RANGE = (-6.0, 12.0)
PHI_MAX = 8.5
"""Phi(-8.5) < 2**-56: zero at 2**-40."""

_P = 256  # fractional bits of the fixed-point series
_PI_DIGITS = 31415926535897932384626433832795028841971693993751058209749445923078164062862089986280348253421170679
_PI_SCALE = 10**100


def _exp_step(sign: int) -> int:
    """e**(sign / 256) * 2**P, from its Taylor series."""
    term = total = 1 << _P
    k = 1
    while term:
        term //= 256 * k
        total += term if sign > 0 or k % 2 == 0 else -term
        k += 1
    return total


def _exp_fixed(first: int, last: int) -> list[int]:
    """e**(i / 256) * 2**P for i = first..last (first <= 0 <= last)."""
    down, up = _exp_step(-1), _exp_step(1)
    neg, pos = [1 << _P], [1 << _P]
    for _ in range(-first):
        neg.append(neg[-1] * down >> _P)
    for _ in range(last):
        pos.append(pos[-1] * up >> _P)
    return neg[::-1] + pos[1:]


def _round_div(num: int, den: int) -> int:
    """num / den rounded half up, for den > 0."""
    return (2 * num + den) // (2 * den)


def _tensor(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


@functools.lru_cache(maxsize=1)
def sigmoid_table() -> tuple[torch.Tensor, int]:
    """``(table, start)``: round(2**24 sigmoid(i / 256)) for i = start.. (i = -24*256 .. 24*256)."""
    n = int(SIGMOID_MAX * 2**GRID_BITS)
    exps = _exp_fixed(-n, 0)[::-1]  # e**(-i/256), i = 0..n
    one = 1 << (SIGMOID_BITS + _P)
    positive = [_round_div(one, (1 << _P) + e) for e in exps]  # sigmoid(i/256) = 1 / (1 + e**(-i/256))
    negative = [(1 << SIGMOID_BITS) - v for v in positive[:0:-1]]  # sigmoid(-t) = 1 - sigmoid(t), exactly
    return _tensor(negative + positive), -n


@functools.lru_cache(maxsize=1)
def exp_neg_table() -> tuple[torch.Tensor, int]:
    """``(table, 0)``: round(2**30 exp(-i / 256)) for i = 0..24*256 (decreasing)."""
    n = int(EXP_NEG_MAX * 2**GRID_BITS)
    exps = _exp_fixed(-n, 0)[::-1]
    return _tensor([_round_div(e, 1 << (_P - EXP_NEG_BITS)) for e in exps]), 0


@functools.lru_cache(maxsize=1)
def exp_table() -> tuple[torch.Tensor, int]:
    """``(table, start)``: round(2**16 exp(i / 256)) for i = -6*256 .. 12*256."""
    first, last = (int(x * 2**GRID_BITS) for x in EXP_RANGE)
    return _tensor([_round_div(e, 1 << (_P - EXP_BITS)) for e in _exp_fixed(first, last)]), first


@functools.lru_cache(maxsize=1)
def phi_table() -> tuple[torch.Tensor, int]:
    """``(table, start)``: round(2**40 Phi(i / 256)) for i = -8.5*256 .. 8.5*256, Phi the standard normal CDF.

    Phi(x) = 1/2 + x / sqrt(2 pi) * sum_n (-x**2 / 2)**n / (n! (2n + 1)), with x**2 / 2 = i**2 / 2**17 exact.
    """
    n = int(PHI_MAX * 2**GRID_BITS)
    pc = 128
    inv_root = (1 << (2 * pc)) // math.isqrt(2 * _PI_DIGITS * (1 << (2 * pc)) // _PI_SCALE)  # 2**pc / sqrt(2 pi)
    half, den = 1 << (PHI_BITS - 1), 1 << (GRID_BITS + _P + pc)
    upper = []
    for i in range(n + 1):
        term = series = 1 << _P
        k = 1
        while term:
            term = term * i * i // (2 ** (2 * GRID_BITS + 1) * k)
            series += -(term // (2 * k + 1)) if k % 2 else term // (2 * k + 1)
            k += 1
        upper.append(half + _round_div(i * series * inv_root << PHI_BITS, den))
    lower = [(1 << PHI_BITS) - v for v in upper[:0:-1]]  # Phi(-x) = 1 - Phi(x), exactly
    return _tensor(lower + upper), -n


def lookup(table: tuple[torch.Tensor, int], x: torch.Tensor) -> torch.Tensor:
    """The table's function at ``x`` (int64, units of 2**-16), clamped to the table's
    range and interpolated linearly: ``a + ((b - a) * frac + 128) >> 8``. Integers only.
    """
    values, start = table
    values = values.to(x.device)
    low, high = start << GRID_BITS, (start + len(values) - 1) << GRID_BITS
    offset = x.clamp(low, high) - low
    index, frac = offset >> GRID_BITS, offset & ((1 << GRID_BITS) - 1)
    a = values[index]
    b = values[(index + 1).clamp(max=len(values) - 1)]
    return a + (((b - a) * frac + (1 << (GRID_BITS - 1))) >> GRID_BITS)


def all_tables() -> dict[str, torch.Tensor]:
    """Every table by name: what a test hashes to check that this machine built the same tables as any other."""
    return {"sigmoid": sigmoid_table()[0], "exp_neg": exp_neg_table()[0], "exp": exp_table()[0],
            "phi": phi_table()[0]}
