"""The fast paths that run as ordinary convs (cuDNN on a GPU, oneDNN on the CPU): no Triton, every padding
mode, and a backward.

- ``merged``: L1, L2 and L3 folded into one k_h x k_w conv (I -> R K^2), then L4 as a 1x1 conv. Pointwise
  channel mixing commutes with padding (any mode) and with depthwise filtering, so the first three layers are
  one dense conv whose row m is ``W1[m]`` times channel m's separable filter: k_h k_w times L1's MACs in one
  call.
- ``full``: the reconstructed O x I x k_h x k_w kernel as one conv: the dense layer's MACs, but a single
  launch, which is what wins on small, launch-bound layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kcp.kernels import prepare


def merged_forward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run KCPConv2d ``module`` on ``x`` as one k_h x k_w conv to the middle width and one 1x1 conv."""
    from kcp.modules.base import conv  # lazy: kcp.modules imports this package

    w = prepare.weights(module, "merged", x.dtype, x.device, use_cache=not prepare.needs_grad(module, x))
    return F.conv2d(conv(x, w["w_mid"], module.geometry), w["w_out"], w["bias"])


def full_forward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run KCPConv2d ``module`` on ``x`` as one conv with its reconstructed kernel."""
    from kcp.modules.base import conv

    w = prepare.weights(module, "full", x.dtype, x.device, use_cache=not prepare.needs_grad(module, x))
    return conv(x, w["w_full"], module.geometry, w["bias"])
