"""Network-level fidelity: the pretrained network with one conv replaced, against the original."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kcp.zoo._memo import Memo
from kcp.zoo.activations import batch_size, get_conv
from kcp.zoo.images import sample_images
from kcp.zoo.loaded import LoadedModel
from kcp.zoo.suffix import network_suffix
from kcp.zoo.swap import with_layer

_baselines: Memo[torch.Tensor] = Memo(size=16)


@dataclass(frozen=True)
class Fidelity:
    """How closely the network with the layer replaced follows the original on ``n_images`` real images.

    ``accuracy`` and ``baseline_accuracy`` (of the original) exist where the images have labels (digits).
    ``logit_rel_error`` is ||logits - original logits||_F / ||original logits||_F. ``n_changed`` images (of
    ``n_images``) get a different top-1 class than from the original: the images that decide the agreement.
    """

    top1_agreement: float
    accuracy: float | None
    baseline_accuracy: float | None
    n_images: int
    logit_rel_error: float
    n_changed: int


def logits(model: nn.Module, x: torch.Tensor, batch: int) -> torch.Tensor:
    """``model``'s outputs on ``x``, ``batch`` images at a time, without autograd."""
    with torch.no_grad():
        return torch.cat([model(b) for b in x.split(batch)])


def baseline_logits(loaded: LoadedModel, n: int | None = None) -> torch.Tensor:
    """The original network's outputs on the first ``n`` evaluation images (computed once, a fresh copy returned)."""
    x, _ = sample_images(loaded, n, "evaluation")
    cached = _baselines.get((loaded.key, len(x)), lambda: logits(loaded.model, x, batch_size(loaded)))
    return cached.clone()


def network_fidelity(loaded: LoadedModel, layer: str, module: nn.Module, n: int | None = None,
                     batch: int | None = None) -> Fidelity:
    """Top-1 agreement (and accuracy, where labels exist) of the network with conv ``layer`` replaced by
    ``module``, on the first ``n`` evaluation images (never the calibration ones), at most ``batch`` at a time
    (default: the family's batch). ``module`` is put in eval mode; ``loaded.model`` is not changed. Only the part
    of the network after the layer runs where it can be split off (:mod:`kcp.zoo.suffix`)."""
    get_conv(loaded, layer)
    x, y = sample_images(loaded, n, "evaluation")
    base = baseline_logits(loaded, n)
    step = min(batch or batch_size(loaded), batch_size(loaded))
    suffix = network_suffix(loaded, layer, n)
    if suffix is not None and min(suffix.step, len(x)) <= step:  # the kept batches are within the asked bound
        out = suffix.logits(module.eval())
    else:
        out = logits(with_layer(loaded.model, layer, module.eval()), x, step)

    def acc(z: torch.Tensor) -> float | None:
        return None if y is None else (z.argmax(1) == y).float().mean().item()

    same = out.argmax(1) == base.argmax(1)
    return Fidelity(
        top1_agreement=same.float().mean().item(),
        accuracy=acc(out),
        baseline_accuracy=acc(base),
        n_images=len(x),
        logit_rel_error=((out - base).norm() / base.norm()).item(),
        n_changed=int((~same).sum()),
    )
