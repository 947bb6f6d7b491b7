"""Drop-in ``nn.Module``s that run decomposition factors, and ``from_conv`` to make one from a layer."""

from __future__ import annotations

import copy

import torch
from torch import nn

from kcp import methods
from kcp.decomposition import Decomposition, decompose
from kcp.geometry import ConvGeometry
from kcp.modules.base import FactorisedConv2d
from kcp.modules.baselines import CPConv2d, KTConv2d, SVDConv2d, Tucker2Conv2d
from kcp.modules.kcp_conv import KCPConv2d


def check_conv(conv: nn.Module) -> nn.Conv2d:
    """The layer if it is a plain ``nn.Conv2d`` that the factorised modules can replace; else a ValueError."""
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"expected an nn.Conv2d, got {type(conv).__name__}")
    if conv.groups != 1:
        raise ValueError(
            f"groups={conv.groups}: factorised modules replace dense convs (groups=1) only; "
            f"depthwise and grouped convs are not supported"
        )
    return conv


def to_module(result: Decomposition, *, geometry: ConvGeometry | None = None, bias: torch.Tensor | None = None,
              **options) -> nn.Module:
    """The module that runs ``result`` with that geometry and bias (``nn.Conv2d`` for a dense result)."""
    geometry = geometry or ConvGeometry()
    if result.method == "dense":
        out_c, in_c, kh, kw = result.kernel_shape
        weight = result.factors["weight"]
        layer = nn.Conv2d(in_c, out_c, (kh, kw), geometry.stride, geometry.padding, geometry.dilation,
                          bias=bias is not None, padding_mode=geometry.padding_mode,
                          device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(weight)
            if bias is not None:
                layer.bias.copy_(bias)
        return layer
    module = methods.get(result.method).module
    if module is None:
        raise ValueError(f"no module for method {result.method!r}")
    return module.from_decomposition(result, bias=bias, geometry=geometry, **options)


def from_conv(conv: nn.Conv2d, method: str, *, execution: str | None = None, **kwargs) -> nn.Module:
    """Decompose a conv layer's kernel with ``method`` and return the module that replaces it.

    ``kwargs`` are the method's ranks and options (``kt_rank=``, ``cp_rank=``, ``rank=``, ...); the
    layer's stride, padding, dilation, padding mode and bias carry over. ``execution`` picks how
    a KCP module runs L1 and L4.
    """
    conv = check_conv(conv)
    if method == "dense":
        return copy.deepcopy(conv)
    result = decompose(conv.weight, method, **kwargs)
    options = {} if execution is None else {"execution": execution}
    return to_module(result, geometry=ConvGeometry.from_conv(conv), bias=conv.bias, **options)


__all__ = ["CPConv2d", "FactorisedConv2d", "KCPConv2d", "KTConv2d", "SVDConv2d", "Tucker2Conv2d",
           "check_conv", "from_conv", "to_module"]
