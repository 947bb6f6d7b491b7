"""Kronecker index convention, factor shapes and the Van Loan-Pitsianis rearrangement.

One convention everywhere: in ``A (x) B`` the A index is the outer (slow) one, so channel
``c = c_A * C_B + c_B`` and ``torch.kron`` on equal-order tensors gives the same array.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

PLACEMENTS = ("split", "a-spatial")


def balanced_split(n: int) -> tuple[int, int]:
    """Most balanced divisor pair ``(a, b)`` of ``n`` with ``a <= b`` (256 -> 16x16, 96 -> 8x12)."""
    if n < 1:
        raise ValueError(f"cannot split a size of {n}: sizes must be >= 1")
    a = math.isqrt(n)
    while n % a:
        a -= 1
    return a, n // a


def has_nontrivial_split(n: int) -> bool:
    """True when ``n`` has a divisor pair other than ``1 x n`` (n is neither 1 nor prime)."""
    return balanced_split(n)[0] > 1


@dataclass(frozen=True)
class FactorShape:
    """Shapes of the two Kronecker factors: A is O_A x I_A x kA_h x kA_w, B is O_B x I_B x kB_h x kB_w."""

    out_a: int
    out_b: int
    in_a: int
    in_b: int
    ka_h: int
    ka_w: int
    kb_h: int
    kb_w: int

    @property
    def a_shape(self) -> tuple[int, int, int, int]:
        return (self.out_a, self.in_a, self.ka_h, self.ka_w)

    @property
    def b_shape(self) -> tuple[int, int, int, int]:
        return (self.out_b, self.in_b, self.kb_h, self.kb_w)

    @property
    def kernel_shape(self) -> tuple[int, int, int, int]:
        return (
            self.out_a * self.out_b,
            self.in_a * self.in_b,
            self.ka_h * self.kb_h,
            self.ka_w * self.kb_w,
        )

    @property
    def channels(self) -> tuple[int, int, int, int]:
        """``(O_A, O_B, I_A, I_B)``, the form the CLI's ``--factors`` takes."""
        return (self.out_a, self.out_b, self.in_a, self.in_b)

    @property
    def placement(self) -> str:
        if (self.kb_h, self.kb_w) == (1, 1):
            return "a-spatial"
        return "split"

    def __str__(self) -> str:
        return f"{self.out_a}x{self.out_b}|{self.in_a}x{self.in_b}"


def _spatial(kernel_hw: tuple[int, int], placement: str) -> tuple[int, int, int, int]:
    kh, kw = kernel_hw
    if placement == "split":
        return kh, 1, 1, kw
    if placement == "a-spatial":
        return kh, kw, 1, 1
    raise ValueError(f"unknown placement {placement!r}: use one of {', '.join(PLACEMENTS)}")


def make_factor_shape(
    kernel_shape: tuple[int, ...],
    factors: tuple[int, int, int, int] | None = None,
    placement: str = "split",
) -> FactorShape:
    """Factor shape for a kernel: ``factors=(O_A, O_B, I_A, I_B)`` or, when None, balanced pairs.

    ``split`` puts k_h on A and k_w on B; ``a-spatial`` puts the whole k_h x k_w on A (B is a
    matrix). A channel count with only the trivial split (1 or prime) is refused unless the
    caller passes that trivial split explicitly.
    """
    out_c, in_c, kh, kw = (int(s) for s in kernel_shape)
    ka_h, ka_w, kb_h, kb_w = _spatial((kh, kw), placement)
    if factors is None:
        for name, n in (("C_out", out_c), ("C_in", in_c)):
            if not has_nontrivial_split(n):
                raise ValueError(
                    f"{name}={n} has only the trivial split 1x{n}, so a Kronecker factorisation of "
                    f"this layer has nothing to share; choose another layer or pass the trivial "
                    f"split explicitly (factors=(O_A, O_B, I_A, I_B) with a 1)"
                )
        o_a, o_b = balanced_split(out_c)
        i_a, i_b = balanced_split(in_c)
    else:
        if len(factors) != 4:
            raise ValueError(f"factors must be 4 sizes (O_A, O_B, I_A, I_B), got {tuple(factors)}")
        o_a, o_b, i_a, i_b = (int(f) for f in factors)
        if min(o_a, o_b, i_a, i_b) < 1:
            raise ValueError(f"factor sizes must be >= 1, got {(o_a, o_b, i_a, i_b)}")
        if o_a * o_b != out_c or i_a * i_b != in_c:
            raise ValueError(
                f"factor shape {o_a}x{o_b}|{i_a}x{i_b} does not divide the kernel's channels: "
                f"need O_A*O_B = C_out = {out_c} and I_A*I_B = C_in = {in_c}"
            )
    return FactorShape(o_a, o_b, i_a, i_b, ka_h, ka_w, kb_h, kb_w)


def kcp_applicability(kernel_shape: tuple[int, ...], groups: int = 1) -> tuple[bool, str]:
    """Whether the default KCP factorisation applies to a conv layer, and why not when it does not."""
    if groups != 1:
        return False, (
            f"grouped conv (groups={groups}): KCP factorises a dense C_out x C_in kernel; "
            f"depthwise and grouped layers are not supported"
        )
    out_c, in_c = int(kernel_shape[0]), int(kernel_shape[1])
    for name, n in (("C_out", out_c), ("C_in", in_c)):
        if not has_nontrivial_split(n):
            return False, (
                f"{name}={n} has only the trivial split 1x{n}: choose another layer, "
                f"or give a trivial factor shape explicitly"
            )
    return True, "ok"


def rearrange(weight: torch.Tensor, shape: FactorShape) -> torch.Tensor:
    """Van Loan-Pitsianis rearrangement: rows index entries of A, columns entries of B.

    ``sum_r vec(A_r) vec(B_r)^T`` maps back (``unrearrange``) to ``sum_r A_r (x) B_r``; the map is a
    permutation, so Frobenius norms are preserved.
    """
    s = shape
    w = weight.reshape(s.out_a, s.out_b, s.in_a, s.in_b, s.ka_h, s.kb_h, s.ka_w, s.kb_w)
    w = w.permute(0, 2, 4, 6, 1, 3, 5, 7)
    return w.reshape(math.prod(s.a_shape), math.prod(s.b_shape))


def unrearrange(matrix: torch.Tensor, shape: FactorShape) -> torch.Tensor:
    """Inverse of :func:`rearrange`."""
    s = shape
    w = matrix.reshape(s.out_a, s.in_a, s.ka_h, s.ka_w, s.out_b, s.in_b, s.kb_h, s.kb_w)
    w = w.permute(0, 4, 1, 5, 2, 6, 3, 7)
    return w.reshape(s.kernel_shape)


def kron_sum(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``sum_r A_r (x) B_r`` for stacks ``a`` (R, *A) and ``b`` (R, *B) of equal-order tensors."""
    out = None
    for a_r, b_r in zip(a, b):
        term = torch.kron(a_r.contiguous(), b_r.contiguous())  # torch.kron cannot take some strided views
        out = term if out is None else out + term
    if out is None:
        raise ValueError("kron_sum needs at least one term")
    return out


def max_kt_rank(shape: FactorShape) -> int:
    """Largest meaningful KT rank: the smaller side of the rearranged matrix (KT is exact there)."""
    return min(math.prod(shape.a_shape), math.prod(shape.b_shape))


def max_cp_rank_of(dims: tuple[int, ...]) -> int:
    """An upper bound on the CP rank of any tensor of these dims: the smallest product of all but one."""
    dims = tuple(d for d in dims if d > 1) or (1,)
    if len(dims) == 1:
        return 1
    total = math.prod(dims)
    return min(total // d for d in dims)


def max_cp_rank(shape: FactorShape) -> int:
    """Largest meaningful CP rank of a KCP factor: past it both A_r and B_r are already exact."""
    return max(max_cp_rank_of(shape.a_shape), max_cp_rank_of(shape.b_shape))
