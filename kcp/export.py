"""Saving a decomposed layer (or a whole compressed network) to a file and loading it back, ready to run."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from kcp.decomposition import Decomposition
from kcp.geometry import ConvGeometry
from kcp.modules import to_module

FORMAT = "kcp-rank-explorer/decomposed-layer/1"
NETWORK_FORMAT = "kcp-rank-explorer/compressed-network/1"


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
    return module_from_state(state), state["meta"]


def module_from_state(state: dict[str, Any]) -> nn.Module:
    """The module described by :func:`layer_state`."""
    g = state["geometry"]
    padding = g["padding"] if isinstance(g["padding"], str) else tuple(g["padding"])
    geometry = ConvGeometry.make(tuple(g["stride"]), padding, tuple(g["dilation"]), g["padding_mode"])
    return to_module(Decomposition.from_state(state["decomposition"]), geometry=geometry, bias=state["bias"])


def save_network(path: str | os.PathLike, net: nn.Module, arch: str, meta: dict[str, Any] | None = None) -> None:
    """Write a compressed zoo network: its architecture's name, every factorised conv's layer state, and the whole
    state dict (fine-tuned factors, BN statistics). :func:`load_network` rebuilds it."""
    from kcp.modules import FactorisedConv2d

    layers = {name: layer_state(m.decomposition(), m.geometry, m.bias) for name, m in net.named_modules()
              if isinstance(m, FactorisedConv2d)}
    torch.save({"format": NETWORK_FORMAT, "arch": arch, "layers": layers,
                "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
                "meta": {k: v for k, v in (meta or {}).items() if isinstance(v, (int, float, str, bool))}}, path)


def load_network(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """The network saved by :func:`save_network` (eval mode, CPU) and its metadata."""
    from kcp.zoo import get_spec

    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != NETWORK_FORMAT:
        raise ValueError(f"{os.fspath(path)!r} is not a compressed-network file of KCP Rank Explorer")
    net = get_spec(state["arch"]).build()
    for name, layer in state["layers"].items():
        net.set_submodule(name, module_from_state(layer))
    net.load_state_dict(state["state_dict"], strict=True)
    return net.eval(), {**state["meta"], "arch": state["arch"]}
