"""How numbers are written on the cards and in tables (one place, so tests can compare shown text with kcp)."""

from __future__ import annotations

import math

from kcp.methods import METHODS


def count(n: int | None) -> str:
    """An exact count with thousands separators: 36,864."""
    return "n/a" if n is None else f"{int(n):,}"


def si(n: float | None) -> str:
    """A large quantity with an SI prefix: 2.36 M."""
    if n is None:
        return "n/a"
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {prefix}"
    return f"{n:.3g}"


def error(x: float | None) -> str:
    """A relative error (0 is exact, 1 is as far off as predicting zeros)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.4f}"


def percent(x: float | None) -> str:
    """A share as a percentage: 13.1 %."""
    return "n/a" if x is None else f"{100 * x:.1f} %"


def ratio(x: float) -> str:
    """A factor such as a compression: 121x, 1.6x, 0.83x."""
    return f"{x:,.0f}×" if x >= 100 else f"{x:.3g}×"


def ms(x: float | None) -> str:
    """A time given in milliseconds, in µs below 1 ms: 316 µs, 1.07 ms."""
    if x is None:
        return "n/a"
    return f"{x * 1e3:.0f} µs" if x < 1 else f"{x:.3g} ms"


def nbytes(n: float) -> str:
    """A memory size: 7.0 MiB."""
    for scale, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def shape(dims) -> str:
    """A tensor or kernel shape: 64×64×3×3."""
    return "×".join(str(d) for d in dims)


def ranks(ranks: dict[str, int]) -> str:
    """A method's ranks as the library names them: R=2 K=4, rank 24, 12/16 (the method told by the rank names)."""
    method = next((m for m in METHODS.values() if m.ranks and set(m.ranks) == set(ranks)), None)
    return "-" if method is None else method.describe(ranks)
