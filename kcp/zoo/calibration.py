"""Calibration for output fits: the patch moments of a layer's inputs over the calibration images.

The activations are reduced batch by batch as the network produces them, so memory stays bounded by one
forward batch and the D x D moment, whatever the number of images; the result is computed once per model,
layer and image count and shared (read-only) by every caller, and kept in the on-disk cache (:mod:`kcp.cache`),
so that another process (the app's next worker, the next CLI run) reads it instead of running the network again.
"""

from __future__ import annotations

import contextlib

import torch

from kcp.cache import ResultCache, cache_key
from kcp.decomposition.moments import PatchMoments, patch_moments
from kcp.geometry import ConvGeometry
from kcp.zoo._memo import Memo
from kcp.zoo.activations import get_conv, layer_batches
from kcp.zoo.images import default_images
from kcp.zoo.loaded import LoadedModel

_moments: Memo[PatchMoments] = Memo(size=16)


def combine(parts: list[PatchMoments]) -> PatchMoments:
    """The moments of the union of the inputs behind ``parts`` (sums of sums)."""
    first = parts[0]
    for p in parts[1:]:
        if (p.in_channels, p.kernel_hw) != (first.in_channels, first.kernel_hw):
            raise ValueError("cannot combine patch moments taken for different layer shapes")
    return PatchMoments(
        gram=torch.stack([p.gram for p in parts]).sum(0), total=torch.stack([p.total for p in parts]).sum(0),
        count=sum(p.count for p in parts), n_inputs=sum(p.n_inputs for p in parts),
        in_channels=first.in_channels, kernel_hw=first.kernel_hw,
    )


def layer_moments(loaded: LoadedModel, layer: str, n: int | None = None) -> PatchMoments:
    """Patch moments of conv ``layer``'s inputs over the first ``n`` calibration images (the model's default
    number when None); never touches the evaluation images. Cached: treat the result as read-only."""
    conv = get_conv(loaded, layer)
    n = default_images(loaded, "calibration") if n is None else n
    geometry = ConvGeometry.from_conv(conv)
    kernel_hw = tuple(conv.weight.shape[2:])

    def compute() -> PatchMoments:
        running: PatchMoments | None = None
        for x in layer_batches(loaded, layer, n, "calibration"):
            part = patch_moments(x, kernel_hw, geometry)
            running = part if running is None else combine([running, part])
        return running

    return _moments.get((loaded.key, layer, n), lambda: _stored(loaded, layer, n, compute))


def _stored(loaded: LoadedModel, layer: str, n: int, compute) -> PatchMoments:
    """``compute()``, or its result as a process stored it before (same weights, layer and images)."""
    cache = ResultCache()
    key = cache_key(kind="patch_moments", model=loaded.name, arch=loaded.arch, weights=loaded.weights_id,
                    layer=layer, images=n)
    entry = cache.get(key)
    if entry is not None:
        return PatchMoments(entry["gram"], entry["total"], int(entry["count"]), int(entry["n_inputs"]),
                            int(entry["in_channels"]), tuple(entry["kernel_hw"]))
    moments = compute()
    with contextlib.suppress(OSError):  # an unwritable cache only loses the head start of the next process
        cache.put(key, {"gram": moments.gram, "total": moments.total, "count": moments.count,
                        "n_inputs": moments.n_inputs, "in_channels": moments.in_channels,
                        "kernel_hw": list(moments.kernel_hw)})
    return moments
