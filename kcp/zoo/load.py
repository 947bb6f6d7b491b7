"""``load_model``: a zoo name or a checkpoint path in, a LoadedModel out."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from kcp.zoo.checkpoint import MAX_CHECKPOINT_BYTES, load_checkpoint, unwrap_state
from kcp.zoo.errors import ZooError
from kcp.zoo.loaded import LoadedModel, instantiate, named_convs
from kcp.zoo.registry import ASSETS, MODELS, ModelSpec, get_spec
from kcp.zoo.weights import checkpoints_dir, file_sha256, load_hub_state_dict


def load_model(
    source: str | os.PathLike,
    *,
    arch: str | None = None,
    download: bool = True,
    max_bytes: int = MAX_CHECKPOINT_BYTES,
) -> LoadedModel:
    """Load a zoo model by name, or a user checkpoint by path.

    For a path, ``arch`` names the zoo architecture its state dict is for; without it the architecture is
    detected from the keys, and a state dict that matches none is taken as bare conv kernels. ``download``
    allows fetching uncached zoo weights; ``max_bytes`` caps the size of a user checkpoint.
    """
    if isinstance(source, str) and source in MODELS:
        if arch not in (None, source):
            raise ZooError(f"{source!r} is a zoo model; arch={arch!r} applies to checkpoint paths only")
        return _load_zoo(MODELS[source], download)
    path = Path(source)
    if not path.exists() and isinstance(source, str) and not any(c in source for c in "/\\."):
        get_spec(source)  # a misspelt zoo name: say which names exist
    return load_checkpoint(path, arch, max_bytes)


def weights_available(name: str) -> bool:
    """Whether the zoo model's weights are on this machine already (so loading it needs no network)."""
    spec = get_spec(name)
    folder = ASSETS if spec.url is None else checkpoints_dir()
    return (folder / spec.file_name).is_file()


def _load_zoo(spec: ModelSpec, download: bool) -> LoadedModel:
    if spec.url is None:
        path = ASSETS / spec.file_name
        if not path.is_file():
            raise ZooError(f"{path} is missing: recreate it with python -m kcp.zoo.train_digits")
        state = torch.load(path, map_location="cpu", weights_only=True)
        source = f"{spec.weights_label} ({path})"
    else:
        state, path = load_hub_state_dict(spec.title, spec.url, spec.file_name, spec.file_mb, download=download)
        source = f"{spec.weights_label} ({path})"
    try:
        model = instantiate(spec, unwrap_state(state, path.name))
    except (RuntimeError, ZooError) as exc:
        raise ZooError(
            f"{path} does not hold {spec.title} weights ({exc}); delete it and load {spec.name!r} again"
        ) from exc
    return LoadedModel(
        name=spec.name,
        model=model,
        input_size=spec.input_size,
        weights_id=file_sha256(path)[:12],
        source=source,
        num_classes=spec.num_classes,
        convs=named_convs(model),
        arch=spec.name,
        categories=spec.categories,
        reported_top1=spec.reported_top1,
    )
