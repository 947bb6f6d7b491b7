"""What every factorised conv shares: geometry, bias, padding, and the way back to a Decomposition."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kcp import methods
from kcp.decomposition import Decomposition
from kcp.geometry import ConvGeometry

_PAD_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate", "circular": "circular"}


def pad(x: torch.Tensor, top: int, bottom: int, left: int, right: int, padding_mode: str) -> torch.Tensor:
    """Explicit padding in the conv's padding mode (a no-op when there is none)."""
    if top == bottom == left == right == 0:
        return x
    return F.pad(x, (left, right, top, bottom), mode=_PAD_MODES[padding_mode])


def conv(x: torch.Tensor, weight: torch.Tensor, geometry: ConvGeometry, bias: torch.Tensor | None = None,
         groups: int = 1) -> torch.Tensor:
    """``F.conv2d`` with the geometry's stride, dilation and padding (explicit when not plain zeros)."""
    top, bottom, left, right = geometry.pads(tuple(weight.shape[2:]))
    if geometry.padding_mode == "zeros" and top == bottom and left == right:
        padding = (top, left)
    else:
        x, padding = pad(x, top, bottom, left, right, geometry.padding_mode), (0, 0)
    return F.conv2d(x, weight, bias, geometry.stride, padding, geometry.dilation, groups)


def depthwise_h(x: torch.Tensor, filters: torch.Tensor | None, geometry: ConvGeometry, kh: int,
                pads: tuple[int, int]) -> torch.Tensor:
    """The k_h x 1 stage: pad rows, then a depthwise conv down the rows (or just the row stride when k_h = 1)."""
    x = pad(x, pads[0], pads[1], 0, 0, geometry.padding_mode)
    if filters is None:
        return x[:, :, :: geometry.stride[0], :]
    c = filters.shape[0]
    return F.conv2d(x, filters.reshape(c, 1, kh, 1), None, (geometry.stride[0], 1), 0, (geometry.dilation[0], 1), c)


def depthwise_w(x: torch.Tensor, filters: torch.Tensor | None, geometry: ConvGeometry, kw: int,
                pads: tuple[int, int]) -> torch.Tensor:
    """The 1 x k_w stage: pad columns, then a depthwise conv along the rows (or just the column stride)."""
    x = pad(x, 0, 0, pads[0], pads[1], geometry.padding_mode)
    if filters is None:
        return x[:, :, :, :: geometry.stride[1]]
    c = filters.shape[0]
    return F.conv2d(x, filters.reshape(c, 1, 1, kw), None, (1, geometry.stride[1]), 0, (1, geometry.dilation[1]), c)


class FactorisedConv2d(nn.Module):
    """Base of the factorised convs: a drop-in for ``nn.Conv2d`` that runs a decomposition's factors.

    Subclasses name their ``method``, register the factors as parameters and implement ``forward`` and
    ``factors()``; defining a subclass enters it into the method table (:mod:`kcp.methods`).
    """

    method: str = ""

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        methods.implements(cls.method, "module")(cls)

    def __init__(self, result: Decomposition, geometry: ConvGeometry, bias: torch.Tensor | None) -> None:
        super().__init__()
        if result.method != self.method:
            raise ValueError(f"{type(self).__name__} runs '{self.method}' factors, got a '{result.method}' result")
        self.geometry = geometry
        self.kernel_shape = tuple(result.kernel_shape)
        self.ranks = dict(result.ranks)
        self.factor_shape = result.factor_shape
        self.out_channels, self.in_channels = self.kernel_shape[:2]
        self.kernel_size = tuple(self.kernel_shape[2:])
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())

    @classmethod
    def from_decomposition(cls, result: Decomposition, *, bias: torch.Tensor | None = None,
                           geometry: ConvGeometry | None = None, **options) -> FactorisedConv2d:
        """Build the module from a decomposition result, a bias and the conv's geometry."""
        return cls(result, geometry or ConvGeometry(), bias, **options)

    def factors(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def decomposition(self) -> Decomposition:
        """The module's current factors as a Decomposition (``.reconstruct()`` gives its kernel)."""
        return Decomposition(self.method, self.kernel_shape, dict(self.ranks),
                             {k: v.detach() for k, v in self.factors().items()}, self.factor_shape)

    def pads(self) -> tuple[int, int, int, int]:
        return self.geometry.pads(self.kernel_size)

    def extra_repr(self) -> str:
        g = self.geometry
        ranks = ", ".join(f"{k}={v}" for k, v in self.ranks.items())
        shape = f", factors={self.factor_shape}" if self.factor_shape else ""
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, {ranks}{shape}, "
                f"stride={g.stride}, padding={g.padding}, dilation={g.dilation}, bias={self.bias is not None}")
