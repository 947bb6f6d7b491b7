"""KCP Rank Explorer: decompose pretrained conv layers (KCP and baselines), run the factors, measure them.

Quick start::

    from kcp import kcp, from_conv
    result = kcp(conv.weight, kt_rank=2, cp_rank=8)      # a Decomposition
    layer = from_conv(conv, "kcp", kt_rank=2, cp_rank=8)  # a drop-in nn.Module
"""

from kcp.decomposition import Decomposition, KTSpectrum, cp, decompose, dense, kcp, kt, kt_spectrum, svd, tucker2
from kcp.geometry import ConvGeometry
from kcp.kron import FactorShape, kcp_applicability, make_factor_shape, max_cp_rank, max_kt_rank
from kcp.methods import METHODS, Method
from kcp.modules import CPConv2d, KCPConv2d, KTConv2d, SVDConv2d, Tucker2Conv2d, from_conv, to_module

__all__ = [
    "METHODS", "CPConv2d", "ConvGeometry", "Decomposition", "FactorShape", "KCPConv2d", "KTConv2d", "KTSpectrum",
    "Method", "SVDConv2d", "Tucker2Conv2d", "cp", "decompose", "dense", "from_conv", "kcp", "kcp_applicability", "kt",
    "kt_spectrum", "make_factor_shape", "max_cp_rank", "max_kt_rank", "svd", "to_module", "tucker2",
]
