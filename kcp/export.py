"""Saving a decomposed layer to a file and loading it back as a ready module."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from kcp.decompose import Decomposition
from kcp.geometry import ConvGeometry
from kcp.modules import to_module

FORMAT = "kcp-rank-explorer/decomposed-layer/1"


def layer_state(result: Decomposition, geometry: ConvGeometry, bias: torch.Tensor | None,
                meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything needed to rebuild the module, as plain tensors, numbers and strings."""
    g = geometry
    return {
        "format": FORMAT,
        "decomposition": result.state(),
        "geometry": {"stride": list(g.stride), "padding": g.padding if isinstance(g.padding, str) else list(g.padding),
                     "dilation": list(g.dilation), "padding_mode": g.padding_mode},
        "bias": None if bias is None else bias.detach().cpu(),
        "meta": {k: v for k, v in (meta or {}).items() if isinstance(v, (int, float, str, bool))},
    }


def save_layer(path: str | os.PathLike, result: Decomposition, geometry: ConvGeometry, bias: torch.Tensor | None,
               meta: dict[str, Any] | None = None) -> None:
    """Write the layer file (``torch.load(..., weights_only=True)`` reads it; :func:`load_layer` rebuilds it)."""
    torch.save(layer_state(result, geometry, bias, meta), path)


def load_layer(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """The module saved by :func:`save_layer`, and the metadata saved with it."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{os.fspath(path)!r} is not a decomposed-layer file of KCP Rank Explorer")
    g = state["geometry"]
    padding = g["padding"] if isinstance(g["padding"], str) else tuple(g["padding"])
    geometry = ConvGeometry.make(tuple(g["stride"]), padding, tuple(g["dilation"]), g["padding_mode"])
    module = to_module(Decomposition.from_state(state["decomposition"]), geometry=geometry, bias=state["bias"])
    return module, state["meta"]
