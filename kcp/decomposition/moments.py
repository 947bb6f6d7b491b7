"""The output objective of a conv layer: second moments of its input patches over calibration inputs.

A conv is a matrix product on unfolded patches: ``y = W p + b`` with ``W`` as a C_out x D matrix
(D = C_in k_h k_w) and ``p`` one input patch, taken with the layer's own stride, padding (and padding
mode) and dilation. So for a kernel estimate ``W_hat`` the squared output error summed over every
output position of every calibration input is exactly ``tr((W - W_hat) G (W - W_hat)^T)`` with
``G = sum_p p p^T`` (D x D): no need to keep the inputs once ``G`` is accumulated. The bias cancels
in the difference but not in the output's own energy, hence the patch sum ``s = sum_p p``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kcp.geometry import ConvGeometry

# Patches per chunk while accumulating: bounds the unfolded block to CHUNK_ENTRIES float64 numbers.
CHUNK_ENTRIES = 8_000_000


@dataclass(frozen=True)
class PatchMoments:
    """``gram`` = sum of p p^T (D x D), ``total`` = sum of p (D), over ``count`` patches of ``n_inputs`` inputs.

    Float64 on the CPU. ``in_channels`` and ``kernel_hw`` say which layer shape the patches are for.
    """

    gram: torch.Tensor
    total: torch.Tensor
    count: int
    n_inputs: int
    in_channels: int
    kernel_hw: tuple[int, int]

    @property
    def dim(self) -> int:
        return self.gram.shape[0]

    def check_kernel(self, kernel_shape: tuple[int, ...]) -> None:
        """Refuse a kernel whose patches are not the ones these moments were taken for."""
        if (kernel_shape[1], *kernel_shape[2:]) != (self.in_channels, *self.kernel_hw):
            raise ValueError(
                f"calibration patches are for C_in={self.in_channels}, kernel {self.kernel_hw}; the kernel has shape "
                f"{tuple(kernel_shape)}: take the moments at the layer you decompose"
            )

    def error(self, weight: torch.Tensor, approx: torch.Tensor) -> float:
        """Squared output error summed over all calibration outputs, ``tr((W - W_hat) G (W - W_hat)^T)``."""
        delta = (weight - approx).reshape(weight.shape[0], -1).to(torch.float64)
        return float(((delta @ self.gram) * delta).sum().clamp_min(0.0))

    def energy(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> float:
        """Squared norm of the layer's outputs summed over all calibration outputs (bias included)."""
        w = weight.reshape(weight.shape[0], -1).to(torch.float64)
        value = ((w @ self.gram) * w).sum()
        if bias is not None:
            b = bias.to(torch.float64)
            value = value + 2 * (b @ (w @ self.total)) + self.count * b.square().sum()
        return float(value.clamp_min(0.0))

    def relative_error(self, weight: torch.Tensor, approx: torch.Tensor, bias: torch.Tensor | None = None) -> float:
        """``||y_hat - y|| / ||y||`` over the calibration outputs, the same figure as running both convs."""
        ref = self.energy(weight, bias)
        err = self.error(weight, approx)
        if ref == 0.0:
            return 0.0 if err == 0.0 else float("inf")
        return (err / ref) ** 0.5

    def regularised(self, ridge: float = 1e-6) -> torch.Tensor:
        """``G + ridge * tr(G)/D * I``: positive definite, for whitening and normal equations."""
        scale = float(self.gram.diagonal().sum()) / self.dim or 1.0
        return self.gram + ridge * scale * torch.eye(self.dim, dtype=self.gram.dtype)


def unfold_patches(x: torch.Tensor, kernel_hw: tuple[int, int], geometry: ConvGeometry) -> torch.Tensor:
    """Input patches of a conv, (N, D, L), with the layer's padding mode applied as the conv applies it."""
    top, bottom, left, right = geometry.pads(kernel_hw)
    if geometry.padding_mode == "zeros":
        x = F.pad(x, (left, right, top, bottom))
    else:
        x = F.pad(x, (left, right, top, bottom), mode=geometry.padding_mode)
    return F.unfold(x, kernel_hw, dilation=geometry.dilation, stride=geometry.stride)


def patch_moments(
    inputs: torch.Tensor,
    kernel_hw: tuple[int, int],
    geometry: ConvGeometry | None = None,
    *,
    chunk_entries: int = CHUNK_ENTRIES,
) -> PatchMoments:
    """Accumulate the patch moments of ``inputs`` (N, C_in, H, W), a few images at a time (bounded memory)."""
    if not isinstance(inputs, torch.Tensor) or inputs.ndim != 4 or len(inputs) == 0:
        shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise ValueError(f"calibration inputs must be a non-empty (N, C_in, H, W) tensor, got {shape}")
    if not torch.isfinite(inputs).all():
        raise ValueError("calibration inputs contain NaN or inf values")
    geometry = geometry or ConvGeometry()
    kernel_hw = (int(kernel_hw[0]), int(kernel_hw[1]))
    n, c = inputs.shape[:2]
    dim = c * kernel_hw[0] * kernel_hw[1]
    out_h, out_w = geometry.out_hw(tuple(inputs.shape[2:]), kernel_hw)
    per_image = dim * out_h * out_w
    step = max(1, chunk_entries // max(per_image, 1))
    gram = torch.zeros(dim, dim, dtype=torch.float64)
    total = torch.zeros(dim, dtype=torch.float64)
    with torch.no_grad():
        for x in inputs.detach().to("cpu").split(step):
            p = unfold_patches(x.to(torch.float64), kernel_hw, geometry)  # (n, D, L)
            flat = p.transpose(0, 1).reshape(dim, -1)
            gram += flat @ flat.T
            total += flat.sum(dim=1)
    return PatchMoments(gram, total, n * out_h * out_w, n, c, kernel_hw)
