"""One conv layer of a network, with what the metrics need: geometry, input size, activations, fidelity."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from kcp import costs
from kcp.geometry import ConvGeometry
from kcp.modules import check_conv

# Input size assumed for a conv from a bare state dict, which has no network to tell it.
ASSUMED_HW = (32, 32)


@dataclass
class LayerTarget:
    """A conv layer to decompose. ``inputs`` are real activations reaching it (for output error);
    ``fidelity(module, batch=None)`` runs the network with the layer replaced (for top-1 agreement and accuracy),
    at most ``batch`` images at a time."""

    model: str
    name: str
    conv: nn.Conv2d
    in_hw: tuple[int, int]
    weights_id: str
    inputs: torch.Tensor | None = None
    fidelity: Callable[[nn.Module], object] | None = None
    in_hw_assumed: bool = False

    def __post_init__(self) -> None:
        check_conv(self.conv)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, in_hw: tuple[int, int], *, name: str = "conv",
                  inputs: torch.Tensor | None = None) -> LayerTarget:
        """A standalone layer (no network): its weights hash stands in for the model's."""
        import hashlib

        digest = hashlib.sha256(conv.weight.detach().cpu().numpy().tobytes()).hexdigest()[:16]
        return cls(model="(standalone)", name=name, conv=conv, in_hw=tuple(in_hw), weights_id=digest, inputs=inputs)

    @classmethod
    def from_zoo(cls, loaded, layer: str, *, n_images: int | None = None, fidelity: bool = True) -> LayerTarget:
        """The layer ``layer`` of a zoo model, with its real activations and, if asked, network fidelity."""
        from kcp import zoo

        conv = zoo.get_conv(loaded, layer)
        info = next(i for i in zoo.conv_layers(loaded) if i.name == layer)
        if loaded.model is None:
            return cls(loaded.name, layer, conv, ASSUMED_HW, loaded.weights_id, in_hw_assumed=True)
        inputs = zoo.layer_inputs(loaded, layer, n_images)
        check = (lambda module, batch=None: zoo.network_fidelity(loaded, layer, module, n_images, batch)) if fidelity \
            else None
        return cls(loaded.name, layer, conv, tuple(info.in_hw), loaded.weights_id, inputs, check)

    @property
    def geometry(self) -> ConvGeometry:
        return ConvGeometry.from_conv(self.conv)

    @property
    def kernel_shape(self) -> tuple[int, int, int, int]:
        return tuple(self.conv.weight.shape)

    def dense_params(self) -> int:
        return costs.params("dense", self.kernel_shape, {})

    def dense_macs(self) -> int:
        return costs.macs("dense", self.kernel_shape, {}, self.in_hw, self.geometry)
