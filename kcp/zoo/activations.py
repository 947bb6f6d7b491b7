"""The real activations that reach a conv layer when the sample images go through the pretrained network."""

from __future__ import annotations

import difflib
from collections.abc import Iterator

import torch
from torch import nn

from kcp.zoo.errors import ZooError
from kcp.zoo.hooks import thread_hooks
from kcp.zoo.images import sample_images
from kcp.zoo.loaded import LoadedModel
from kcp.zoo.registry import get_spec

# Images per forward pass: bounds memory for the 224 px networks (VGG's early maps are 12 MB per image).
BATCH = {"imagenet": 16, "cifar": 256, "digits": 512}


class _Reached(Exception):
    """Raised by the capture hook: nothing after the chosen layer needs to run."""


def get_conv(loaded: LoadedModel, layer: str) -> nn.Conv2d:
    """The Conv2d called ``layer``, or a ZooError suggesting the nearest names."""
    try:
        return loaded.convs[layer]
    except KeyError:
        close = difflib.get_close_matches(layer, list(loaded.convs), n=3)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else "; see conv_layers() for the names"
        raise ZooError(f"{loaded.name} has no conv layer {layer!r}{hint}") from None


def batch_size(loaded: LoadedModel) -> int:
    """Images per forward pass for this model's family."""
    return BATCH[get_spec(loaded.arch).family] if loaded.arch else BATCH["imagenet"]


def layer_batches(loaded: LoadedModel, layer: str, n: int | None = None,
                  split: str = "evaluation") -> Iterator[torch.Tensor]:
    """The inputs that reach conv ``layer`` from the first ``n`` real images of ``split``, one forward batch
    at a time (so a caller that reduces them never holds them all). The forward pass stops at the layer; a
    layer that runs more than once per pass gives its first input."""
    conv = get_conv(loaded, layer)
    x, _ = sample_images(loaded, n, split)
    captured: list[torch.Tensor] = []

    def grab(_name: str, inputs: tuple[torch.Tensor, ...]) -> None:
        captured.append(inputs[0].contiguous())
        raise _Reached

    for batch in x.split(batch_size(loaded)):
        with thread_hooks({layer: conv}, pre=grab), torch.no_grad():
            try:
                loaded.model(batch)
            except _Reached:
                pass
            else:
                raise ZooError(f"the forward pass of {loaded.name} never reaches {layer!r}, so it has no activations")
        yield captured.pop()


def layer_inputs(loaded: LoadedModel, layer: str, n: int | None = None, split: str = "evaluation") -> torch.Tensor:
    """The inputs (N, C, H, W) that reach conv ``layer`` from the first ``n`` real images of ``split``
    (a fresh tensor)."""
    return torch.cat(list(layer_batches(loaded, layer, n, split)))
