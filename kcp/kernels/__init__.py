"""Fast paths for KCPConv2d: fused Triton kernels, two conv-only paths, and timing-based selection.

Importing this package does not import Triton; the kernels load on first use.
"""

from __future__ import annotations

import torch
from torch import nn

from kcp.kernels.convs import full_forward, merged_forward
from kcp.kernels.fused_kcp import (
    FUSED_VARIANTS,
    SWEEP_CONFIGS,
    BlockConfig,
    default_config,
    fused_forward,
    fused_supported,
)
from kcp.kernels.select import choose, time_ms

FAST_PATHS = ("merged", "full", *FUSED_VARIANTS)
_CONV_PATHS = {"merged": merged_forward, "full": full_forward}


def path_supported(module: nn.Module, x: torch.Tensor, path: str) -> tuple[bool, str]:
    """Whether fast path ``path`` can run ``module`` on ``x``, and why not when it cannot."""
    if path in _CONV_PATHS:
        return True, "ok"
    return fused_supported(module, x, path)


def run_path(module: nn.Module, x: torch.Tensor, path: str) -> torch.Tensor:
    """Run ``module`` on ``x`` along fast path ``path`` (ValueError with the reason if it cannot)."""
    if path in _CONV_PATHS:
        return _CONV_PATHS[path](module, x)
    return fused_forward(module, x, path)


__all__ = ["FAST_PATHS", "FUSED_VARIANTS", "SWEEP_CONFIGS", "BlockConfig", "choose", "default_config", "fused_forward",
           "fused_supported", "full_forward", "merged_forward", "path_supported", "run_path", "time_ms"]
