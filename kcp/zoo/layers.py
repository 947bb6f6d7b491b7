"""The listing of a model's Conv2d layers: geometry, feature-map sizes, costs and whether KCP applies."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kcp.costs import stages
from kcp.geometry import ConvGeometry
from kcp.kron import kcp_applicability
from kcp.zoo._memo import Memo
from kcp.zoo.hooks import thread_hooks
from kcp.zoo.loaded import LoadedModel

_listings: Memo[list[ConvLayerInfo]] = Memo(size=16)


@dataclass(frozen=True)
class ConvLayerInfo:
    """One Conv2d. ``in_hw``/``out_hw``/``macs`` are for one image at the model's native input size and are
    None when there is no network (a bare state dict) or the forward pass never reaches the layer."""

    name: str
    weight_shape: tuple[int, int, int, int]
    stride: tuple[int, int]
    padding: tuple[int, int] | str
    dilation: tuple[int, int]
    groups: int
    bias: bool
    in_hw: tuple[int, int] | None
    out_hw: tuple[int, int] | None
    params: int
    macs: int | None
    kcp_ok: bool
    kcp_reason: str


def feature_sizes(loaded: LoadedModel) -> dict[str, tuple[tuple[int, int], tuple[int, int]]]:
    """Input and output (H, W) of every conv the forward pass reaches, from hooks on one native-size input."""
    if loaded.model is None or loaded.input_size is None:
        return {}
    sizes: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {}

    def record(name: str, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        sizes.setdefault(name, (tuple(inputs[0].shape[-2:]), tuple(output.shape[-2:])))

    # Feature-map sizes do not depend on pixel values, so a blank image will do.
    with thread_hooks(loaded.convs, post=record), torch.inference_mode():
        loaded.model(torch.zeros(1, *loaded.input_size))
    return sizes


def _listing(loaded: LoadedModel) -> list[ConvLayerInfo]:
    sizes = feature_sizes(loaded)
    out = []
    for name, conv in loaded.convs.items():
        shape = tuple(conv.weight.shape)
        geometry = ConvGeometry.from_conv(conv)
        in_hw, out_hw = sizes.get(name, (None, None))
        # Without a feature-map size, evaluate the stage at the kernel's own size: the parameters do not change.
        stage = stages("dense", shape, {}, in_hw or shape[2:], geometry if in_hw else None, bias=conv.bias is not None)
        ok, reason = kcp_applicability(shape, conv.groups)
        out.append(
            ConvLayerInfo(
                name=name,
                weight_shape=shape,
                stride=geometry.stride,
                padding=geometry.padding,
                dilation=geometry.dilation,
                groups=conv.groups,
                bias=conv.bias is not None,
                in_hw=in_hw,
                out_hw=out_hw,
                params=stage[0].params,
                macs=stage[0].macs if in_hw else None,
                kcp_ok=ok,
                kcp_reason=reason,
            )
        )
    return out


def conv_layers(loaded: LoadedModel) -> list[ConvLayerInfo]:
    """Every Conv2d of ``loaded`` in registration order, with sizes measured by forward hooks (cached)."""
    return list(_listings.get(loaded.key, lambda: _listing(loaded)))


def rest_macs(loaded: LoadedModel, layer: str) -> int:
    """Conv MACs per image of every layer of ``loaded`` but ``layer``: what a network-fidelity check may run besides
    the layer (an upper bound: where the network splits there it runs only the part after the layer)."""
    return sum(info.macs or 0 for info in conv_layers(loaded) if info.name != layer)
