"""Input checks shared by every method: clear ValueErrors that say what is wrong and what is allowed."""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch


def check_kernel(weight: torch.Tensor) -> torch.Tensor:
    """A float64 CPU copy of a finite 4-D conv kernel, or a ValueError saying why not."""
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"expected a torch.Tensor conv kernel, got {type(weight).__name__}")
    if weight.ndim != 4:
        raise ValueError(
            f"expected a 4-D conv kernel (C_out, C_in, k_h, k_w), got a {weight.ndim}-D tensor of shape "
            f"{tuple(weight.shape)}"
        )
    if not (weight.is_floating_point()):
        raise ValueError(f"expected a floating-point kernel, got dtype {weight.dtype}")
    if weight.numel() == 0:
        raise ValueError(f"the kernel is empty (shape {tuple(weight.shape)})")
    w = weight.detach().to(device="cpu", dtype=torch.float64)
    bad = int((~torch.isfinite(w)).sum())
    if bad:
        raise ValueError(f"the kernel has {bad} non-finite values (NaN or inf); decompose a finite kernel")
    return w


def as_int(name: str, value: object) -> int:
    """A Python int from an int, a numpy integer or a 0-d integer torch tensor; bools and floats are refused."""
    if isinstance(value, torch.Tensor) and value.ndim == 0 and not value.is_floating_point() \
            and not value.is_complex() and value.dtype != torch.bool:
        return int(value)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(value)


def check_rank(name: str, value: object, largest: int, why: str) -> int:
    """An int rank in ``[1, largest]``; ``why`` says where the bound comes from."""
    value = as_int(name, value)
    if not 1 <= value <= largest:
        raise ValueError(f"{name} must be between 1 and {largest} ({why}), got {value}")
    return value


def check_positive(name: str, value: object) -> int:
    """A positive int (numpy and torch integer scalars accepted)."""
    try:
        number = as_int(name, value)
    except ValueError:
        number = 0
    if number < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return number


def check_tol(name: str, value: object) -> float:
    """A finite, non-negative tolerance as a float."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0 (0 runs to the sweep bound), got {value!r}")
    return float(value)
