"""A model ready for the explorer, and building one from an architecture and a state dict."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from kcp.zoo.registry import ModelSpec


@dataclass(eq=False)
class LoadedModel:
    """A pretrained network (or a bare set of conv kernels) and what the explorer needs to know about it.

    ``model`` is in eval mode on the CPU and is shared: never modify it in place (see ``with_layer``).
    ``arch`` names the zoo entry whose architecture and preprocessing apply (None for a bare state dict).
    """

    name: str
    model: nn.Module | None
    input_size: tuple[int, int, int] | None
    weights_id: str
    source: str
    num_classes: int | None
    convs: dict[str, nn.Conv2d]
    arch: str | None = None
    categories: tuple[str, ...] | None = None
    reported_top1: float | None = field(default=None, repr=False)

    @property
    def key(self) -> tuple[str, str]:
        """What in-process caches key on: the name and the weights' hash."""
        return self.name, self.weights_id


def named_convs(model: nn.Module) -> dict[str, nn.Conv2d]:
    """Every Conv2d of ``model`` by qualified name, in registration order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def signature(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Parameter and buffer shapes of the architecture, without allocating it (built on the meta device)."""
    with torch.device("meta"):
        model = spec.build()
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def instantiate(spec: ModelSpec, state: dict[str, torch.Tensor]) -> nn.Module:
    """``spec``'s architecture holding ``state`` (strictly), eval mode, float32, on the CPU.

    The skeleton is built on the meta device and the tensors are assigned, not copied: no time goes into
    random initialisation (seconds for VGG-16) and no second copy of the weights is made. Raises
    RuntimeError from ``load_state_dict`` when keys or shapes differ.
    """
    with torch.device("meta"):
        model = spec.build()
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"tensors not set by the state dict: {', '.join(left[:5])}")
    return model.eval()
