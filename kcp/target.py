"""One conv layer of a network, with what the metrics need: geometry, input size, activations, fidelity.

Two disjoint sets of real images reach it: **calibration** images, reduced to the patch moments that an output
fit learns from (computed once, on first use), and **evaluation** images, whose activations give the output
error and whose network pass gives top-1 agreement and accuracy. A fit never sees the images it is judged on.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from kcp import costs
from kcp.decomposition.moments import PatchMoments, patch_moments
from kcp.decomposition.outputs import check_fit_name
from kcp.geometry import ConvGeometry
from kcp.modules import check_conv

# Input size assumed for a conv from a bare state dict, which has no network to tell it.
ASSUMED_HW = (32, 32)


def _digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass(eq=False)
class LayerTarget:
    """A conv layer to decompose. ``inputs`` are real activations reaching it from the evaluation images (for
    output error); ``fidelity(module)`` runs the network with the layer replaced on the evaluation images (top-1
    agreement, accuracy); ``calibration()`` gives the patch moments of its inputs over the calibration images
    (for ``fit="outputs"``), ``fidelity(module, batch=n)`` at most n images at a time. ``images`` and
    ``calibration_images`` say in words what the two sets are."""

    model: str
    name: str
    conv: nn.Conv2d
    in_hw: tuple[int, int]
    weights_id: str
    inputs: torch.Tensor | None = None
    fidelity: Callable[[nn.Module], object] | None = None
    in_hw_assumed: bool = False
    calibration: Callable[[], PatchMoments] | None = None
    images: str | None = None
    calibration_images: str | None = None
    _calibration_id: str | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        check_conv(self.conv)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["_lock"]  # a lock does not pickle; a copy sent to a worker gets its own
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, in_hw: tuple[int, int], *, name: str = "conv",
                  inputs: torch.Tensor | None = None,
                  calibration_inputs: torch.Tensor | None = None) -> LayerTarget:
        """A standalone layer (no network): its weights hash stands in for the model's. ``inputs`` are the
        evaluation activations, ``calibration_inputs`` the (different) ones an output fit learns from."""
        digest = hashlib.sha256(conv.weight.detach().cpu().numpy().tobytes()).hexdigest()[:16]
        calibration = None
        if calibration_inputs is not None:
            geometry, kernel_hw = ConvGeometry.from_conv(conv), tuple(conv.weight.shape[2:])
            calibration = fixed_moments(patch_moments(calibration_inputs, kernel_hw, geometry))
        return cls(model="(standalone)", name=name, conv=conv, in_hw=tuple(in_hw), weights_id=digest, inputs=inputs,
                   calibration=calibration,
                   images=None if inputs is None else f"{len(inputs)} given evaluation inputs",
                   calibration_images=None if calibration_inputs is None else
                   f"{len(calibration_inputs)} given calibration inputs")

    @classmethod
    def from_zoo(cls, loaded, layer: str, *, n_images: int | None = None, fidelity: bool = True,
                 calibration: int | None = None) -> LayerTarget:
        """The layer ``layer`` of a zoo model: activations of the first ``n_images`` evaluation images, network
        fidelity on them if asked, and (on first use) the patch moments of the first ``calibration`` calibration
        images (the model's defaults where None)."""
        from kcp import zoo

        conv = zoo.get_conv(loaded, layer)
        info = next(i for i in zoo.conv_layers(loaded) if i.name == layer)
        if loaded.model is None:
            if calibration is not None:
                raise ValueError(f"{loaded.name} is a bare state dict: it has no calibration images, so "
                                 f"--calibration does not apply (load it with a zoo architecture to get them)")
            return cls(loaded.name, layer, conv, ASSUMED_HW, loaded.weights_id, in_hw_assumed=True)
        n_cal = zoo.default_images(loaded, "calibration") if calibration is None else calibration
        top = zoo.max_images(loaded, "calibration")
        if isinstance(n_cal, bool) or not isinstance(n_cal, int) or not 1 <= n_cal <= top:
            raise zoo.ZooError(f"{loaded.name} has {top} calibration images: ask for between 1 and {top}, "
                               f"not {n_cal}")
        inputs = zoo.layer_inputs(loaded, layer, n_images, "evaluation")
        # Partials, not lambdas: they pickle, so the target can travel to a sweep engine's workers.
        check = functools.partial(zoo.network_fidelity, loaded, layer, n=n_images) if fidelity else None
        return cls(loaded.name, layer, conv, tuple(info.in_hw), loaded.weights_id, inputs, check,
                   calibration=functools.partial(zoo.layer_moments, loaded, layer, n_cal),
                   images=zoo.describe_images(loaded, "evaluation", len(inputs)),
                   calibration_images=zoo.describe_images(loaded, "calibration", n_cal))

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

    def moments(self) -> PatchMoments:
        """The calibration patch moments (computed on first use, then shared: read-only)."""
        if self.calibration is None:
            raise ValueError(f"{self.model} {self.name} has no calibration images, so it cannot be fitted to its "
                             f"outputs: use fit='kernel', or give a network (a zoo architecture) or calibration "
                             f"inputs")
        return self.calibration()

    def calibration_id(self) -> str:
        """Identifies the calibration data (a hash of its moments), for caches keyed on what a fit learned."""
        with self._lock:
            if self._calibration_id is None:
                m = self.moments()
                self._calibration_id = f"{_digest(m.gram, m.total)}-{m.count}"
            return self._calibration_id

    def fit_options(self, fit: str) -> dict[str, Any]:
        """The keyword options of a decomposition fitted to ``fit`` on this layer."""
        if check_fit_name(fit) == "kernel":
            return {}
        return {"fit": "outputs", "calibration": self.moments()}


def fixed_moments(moments: PatchMoments) -> Callable[[], PatchMoments]:
    """A ``calibration`` for a target whose patch moments are already known (it pickles, unlike a lambda)."""
    return functools.partial(_given, moments)


def _given(moments: PatchMoments) -> PatchMoments:
    return moments
