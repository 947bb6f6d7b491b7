"""The one table of methods: what each is called, its ranks and options, its rank family and its costs.

Everything that needs to know about a method reads it here: the decompositions and the modules register
their function, reconstruction and ``nn.Module`` into the row of their method (:func:`implements`), the cost
model registers its stage function, the sweep and the budget matcher read the rank family, and the
dashboard and the CLI read labels and the method lists. Adding a method is adding a row here and
registering its parts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kcp.kron import FactorShape, max_cp_rank_of, max_kt_rank

# ranks(r) of a method's one-parameter family, and the largest r: costs grow with r.
RankFamily = tuple[int, Callable[[int], dict[str, int]]]


@dataclass
class Method:
    """One decomposition method. ``ranks`` are the keyword names of its ranks, in order; ``options`` the
    keyword options that change its result and that sweeps and the app set (besides ``fit`` and
    ``calibration``, which every method takes); ``kronecker`` whether it needs a Kronecker factor shape.

    The implementation slots (``decompose``, ``reconstruct``, ``module``, ``stages``, ``factored``) are filled by
    the modules that implement them, through :func:`implements`.
    """

    name: str
    label: str
    ranks: tuple[str, ...]
    options: tuple[str, ...]
    kronecker: bool
    structure: str
    color: str
    family: Callable[[tuple[int, int, int, int], FactorShape | None], RankFamily] | None = None
    decompose: Callable[..., Any] | None = field(default=None, repr=False)
    reconstruct: Callable[..., Any] | None = field(default=None, repr=False)
    module: type | None = field(default=None, repr=False)
    stages: Callable[..., Any] | None = field(default=None, repr=False)
    factored: Callable[..., Any] | None = field(default=None, repr=False)

    @property
    def is_baseline(self) -> bool:
        """A method KCP is compared against (neither KCP itself nor the dense layer)."""
        return self.name not in ("kcp", "dense")

    def describe(self, ranks: dict[str, int]) -> str:
        """The ranks as people write them: R=2 K=4, R=8, rank 24, 12/16, or '-'."""
        if self.name == "kcp":
            return f"R={ranks['kt_rank']} K={ranks['cp_rank']}"
        if self.name == "kt":
            return f"R={ranks['kt_rank']}"
        if self.name == "tucker2":
            return f"{ranks['in_rank']}/{ranks['out_rank']}"
        if self.ranks:
            return f"rank {ranks[self.ranks[0]]}"
        return "-"


def _kt_family(kernel_shape, factor_shape) -> RankFamily:
    if factor_shape is None:
        raise ValueError("the KT rank family needs the factor shape")
    return max_kt_rank(factor_shape), lambda r: {"kt_rank": r}


def _cp_family(kernel_shape, _factor_shape) -> RankFamily:
    return max_cp_rank_of(kernel_shape), lambda r: {"rank": r}


def _svd_family(kernel_shape, _factor_shape) -> RankFamily:
    out_c, in_c, kh, kw = kernel_shape
    return min(out_c, in_c * kh * kw), lambda r: {"rank": r}


def _tucker2_family(kernel_shape, _factor_shape) -> RankFamily:
    """Both ranks in proportion to their channels (r for the larger side)."""
    out_c, in_c, kh, kw = kernel_shape
    big, window = max(out_c, in_c), kh * kw

    def ranks(r: int) -> dict[str, int]:
        ri, ro = max(1, math.ceil(r * in_c / big)), max(1, math.ceil(r * out_c / big))
        # Past r_i * k_h * k_w (or r_o * k_h * k_w) the other rank adds nothing.
        return {"in_rank": min(ri, ro * window), "out_rank": min(ro, ri * window)}

    return big, ranks


_KRON_OPTIONS = ("factors", "placement")
METHODS: dict[str, Method] = {m.name: m for m in (
    Method("dense", "dense", (), (), False, "dense k×k conv", "#111111"),
    Method("kcp", "KCP", ("kt_rank", "cp_rank"), (*_KRON_OPTIONS, "refine_sweeps", "tol", "random_state"), True,
           "KCP (four layers)", "#d62728"),
    Method("kt", "KT only", ("kt_rank",), _KRON_OPTIONS, True, "KT only", "#ff7f0e", _kt_family),
    Method("cp", "CP", ("rank",), ("random_state",), False, "CP", "#1f77b4", _cp_family),
    Method("tucker2", "Tucker-2", ("in_rank", "out_rank"), (), False, "Tucker-2", "#2ca02c", _tucker2_family),
    Method("svd", "SVD", ("rank",), (), False, "SVD", "#9467bd", _svd_family),
)}
# The methods a layer can be decomposed with, KCP first, then its baselines.
DECOMPOSITIONS: tuple[str, ...] = tuple(name for name in METHODS if name != "dense")
BASELINES: tuple[str, ...] = tuple(name for name in DECOMPOSITIONS if METHODS[name].is_baseline)


def get(name: str) -> Method:
    """The method called ``name``, or a ValueError listing the methods there are."""
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown method {name!r}: use one of {', '.join(METHODS)}") from None


def implements(name: str, slot: str) -> Callable[[Any], Any]:
    """Decorator: the decorated function (or module class) fills ``slot`` of method ``name``.

    Slots: ``decompose`` (the method's function), ``reconstruct`` (factors back to a kernel), ``module``
    (the ``nn.Module`` class that runs the factors), ``stages`` (its layers with their costs), ``factored`` (for
    methods whose kernel is a low-rank C_out x D matrix: factors to ``(left, right)``, the kernel ``left @ right``).
    """
    if slot not in ("decompose", "reconstruct", "module", "stages", "factored"):
        raise TypeError(f"no slot {slot!r} in the method table")
    method = get(name)

    def fill(impl: Any) -> Any:
        setattr(method, slot, impl)
        return impl

    return fill


def rank_family(name: str, kernel_shape: tuple[int, int, int, int], factor_shape: FactorShape | None) -> RankFamily:
    """``(largest r, ranks(r))``: the one-parameter family of ranks the budget matcher and the sliders walk."""
    method = get(name)
    if method.family is None:
        raise ValueError(f"no one-parameter rank family for method {name!r}")
    return method.family(kernel_shape, factor_shape)
