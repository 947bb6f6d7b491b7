"""User checkpoints: state dicts of a known architecture, or bare state dicts of conv kernels.

Only ``torch.load(..., weights_only=True)`` is used, so a file that needs pickled code to load is refused,
never executed. Every refusal is a :class:`CheckpointError` that says what is wrong and what to do.
"""

from __future__ import annotations

import os
import pickle
import re
from functools import cache
from pathlib import Path

import torch
from torch import nn

from kcp.zoo.errors import CheckpointError
from kcp.zoo.loaded import LoadedModel, instantiate, named_convs, signature
from kcp.zoo.registry import MODELS, ModelSpec, get_spec
from kcp.zoo.weights import file_sha256

MAX_CHECKPOINT_BYTES = 512 * 2**20
_NESTED_KEYS = ("state_dict", "model")
# BatchNorm fills this in itself when a checkpoint predates it (the CIFAR ResNets do).
_OPTIONAL_SUFFIX = "num_batches_tracked"


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**17 else f"{n:,} bytes"


def read_state_dict(path: str | os.PathLike, max_bytes: int = MAX_CHECKPOINT_BYTES) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, unwrapped (see :func:`unwrap_state`); refuses anything else."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}: check the path (or give a zoo name: {', '.join(MODELS)})")
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file: give the path of a .pt/.pth checkpoint")
    size = path.stat().st_size
    if size > max_bytes:
        raise CheckpointError(
            f"{path.name} is {_size(size)}, over the {_size(max_bytes)} limit for checkpoints: "
            f"save only the state dict of the model (model.state_dict()), or raise the limit"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if found is None:
            detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(exc))
            raise CheckpointError(
                f"{path.name} is not a PyTorch checkpoint ({detail.group(1) if detail else exc}); "
                f"save one with torch.save(model.state_dict(), path)"
            ) from exc
        raise CheckpointError(
            f"{path.name} needs pickled code to load ({found.group(1)}), and pickled code is refused: "
            f"checkpoints are loaded with torch.load(weights_only=True) only. Save the weights alone, "
            f"torch.save(model.state_dict(), path), and load that file"
        ) from exc
    except Exception as exc:  # torch.load raises many types on files it cannot parse
        raise CheckpointError(
            f"{path.name} is not a PyTorch checkpoint that torch.load can read ({type(exc).__name__}: {exc}); "
            f"save one with torch.save(model.state_dict(), path)"
        ) from exc
    return unwrap_state(obj, path.name)


def unwrap_state(obj: object, where: str) -> dict[str, torch.Tensor]:
    """The state dict inside ``obj``: under 'state_dict' or 'model' if nested, without 'module.' prefixes."""
    if isinstance(obj, dict):
        for key in _NESTED_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        kind = "an empty dict" if isinstance(obj, dict) else f"a {type(obj).__name__}"
        raise CheckpointError(
            f"{where} holds {kind}, not a dict of tensors: save the state dict, torch.save(model.state_dict(), path)"
        )
    bad = [f"{k!r} ({type(v).__name__})" for k, v in obj.items() if not (isinstance(k, str) and torch.is_tensor(v))]
    if bad:
        raise CheckpointError(
            f"{where} is not a dict of tensors: {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''} "
            f"are not named tensors; nest the state dict under 'state_dict' or save model.state_dict() alone"
        )
    # DataParallel / DistributedDataParallel save their module's keys under 'module.'.
    return {k.removeprefix("module."): v for k, v in obj.items()}


@cache
def _signature(name: str) -> dict[str, tuple[int, ...]]:
    return signature(get_spec(name))


def _listing(items: list[str]) -> str:
    return ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")


def mismatch(spec: ModelSpec, state: dict[str, torch.Tensor]) -> str | None:
    """How ``state`` differs from ``spec``'s architecture (missing, unexpected, mis-shaped keys), or None."""
    expected = _signature(spec.name)
    missing = [k for k in expected if k not in state and not k.endswith(_OPTIONAL_SUFFIX)]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} is {tuple(v.shape)}, expected {expected[k]}"
        for k, v in state.items()
        if k in expected and tuple(v.shape) != expected[k]
    ]
    parts = [
        f"{label}: {_listing(items)}"
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", shapes))
        if items
    ]
    return "; ".join(parts) or None


def detect_arch(state: dict[str, torch.Tensor]) -> ModelSpec | None:
    """The zoo architecture whose keys and shapes ``state`` matches exactly, if any."""
    return next((spec for spec in MODELS.values() if mismatch(spec, state) is None), None)


def bare_convs(state: dict[str, torch.Tensor], where: str) -> dict[str, nn.Conv2d]:
    """A Conv2d (stride 1, padding k//2, groups 1) for every 4-D tensor, named by its key without '.weight'."""
    convs: dict[str, nn.Conv2d] = {}
    for key, weight in state.items():
        if weight.dim() != 4:
            continue
        name = key.removesuffix(".weight")
        bias = state.get(f"{name}.bias") if key.endswith(".weight") else None
        if bias is not None and tuple(bias.shape) != (weight.shape[0],):
            bias = None
        out_c, in_c, kh, kw = weight.shape
        conv = nn.Conv2d(in_c, out_c, (kh, kw), padding=(kh // 2, kw // 2), bias=bias is not None, device="meta")
        conv.weight = nn.Parameter(weight.float())
        if bias is not None:
            conv.bias = nn.Parameter(bias.float())
        convs[name] = conv.eval()
    if not convs:
        raise CheckpointError(
            f"{where} has no 4-D tensors, so no conv layers to explore; known architectures: {', '.join(MODELS)}"
        )
    return convs


def load_checkpoint(
    path: str | os.PathLike, arch: str | None = None, max_bytes: int = MAX_CHECKPOINT_BYTES
) -> LoadedModel:
    """A user checkpoint as a LoadedModel: into ``arch`` (or the architecture its keys match), else bare."""
    path = Path(path)
    state = read_state_dict(path, max_bytes)
    spec = get_spec(arch) if arch is not None else detect_arch(state)
    weights_id = file_sha256(path)[:12]
    if spec is None:
        convs = bare_convs(state, path.name)
        return LoadedModel(
            name=path.name,
            model=None,
            input_size=None,
            weights_id=weights_id,
            source=f"bare state dict {path} ({len(convs)} conv kernels, no known architecture matched, no network)",
            num_classes=None,
            convs=convs,
        )
    problem = mismatch(spec, state)
    if problem:
        raise CheckpointError(f"{path.name} does not match the {spec.name} architecture: {problem}")
    model = instantiate(spec, state)
    how = "as named" if arch is not None else "detected from its keys"
    return LoadedModel(
        name=path.name,
        model=model,
        input_size=spec.input_size,
        weights_id=weights_id,
        source=f"user checkpoint {path} ({spec.title}, {how})",
        num_classes=spec.num_classes,
        convs=named_convs(model),
        arch=spec.name,
        categories=spec.categories,
    )
