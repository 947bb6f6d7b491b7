"""The network after one conv layer: a fidelity check reruns only what replacing the layer changes.

``torch.fx`` traces the network once per layer. The values that reach the layer or flow past it without depending
on it (its input, a residual block's skip, ...) are computed once on the evaluation images and kept; each check
then runs the replacement module on the kept input and the nodes after the layer only. On digits conv4 that is
the last conv and a pooling instead of the whole network (0.24 s a point to a few hundredths).
:func:`kcp.zoo.fidelity.network_fidelity` uses it where it applies and runs the whole network otherwise (a network
that does not trace, calls the layer more than once, needs smaller batches than the kept ones, or whose kept
values would take more than :data:`KEPT_BYTES`: an early layer of a 224 px network keeps as much as its captured
activations again).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from kcp.zoo._memo import Memo
from kcp.zoo.activations import batch_size, get_conv
from kcp.zoo.images import sample_images
from kcp.zoo.loaded import LoadedModel

_suffixes: Memo[Any] = Memo(size=2)
# The most memory one layer's kept values may take (a layer over it runs the whole network at every check).
KEPT_BYTES = 256 * 2**20
# Tracing patches nn.Module.__call__ for its duration: one trace at a time in a process.
_trace_lock = threading.Lock()


@dataclass(frozen=True)
class Suffix:
    """The nodes after ``layer`` (in order, ending with the output) and, per forward batch of the evaluation
    images, the values they read from before the layer (``kept``); ``step`` images per kept batch."""

    model: nn.Module
    layer: fx.Node
    nodes: tuple[fx.Node, ...]
    kept: tuple[dict[fx.Node, Any], ...]
    step: int

    def logits(self, module: nn.Module) -> torch.Tensor:
        """The network's outputs with the layer replaced by ``module``, over every kept batch."""
        outputs = []
        with torch.no_grad():
            for kept in self.kept:
                env = dict(kept)
                env[self.layer] = module(*fx.node.map_arg(self.layer.args, env.__getitem__),
                                         **fx.node.map_arg(self.layer.kwargs, env.__getitem__))
                outputs.append(_run(self.model, self.nodes, env))
        return torch.cat(outputs)


def _attr(model: nn.Module, target: str) -> Any:
    value: Any = model
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _run(model: nn.Module, nodes: tuple[fx.Node, ...] | list[fx.Node], env: dict[fx.Node, Any]) -> Any:
    """Evaluate ``nodes`` in order into ``env`` (as ``fx.Interpreter`` does); the output node's value, if reached."""
    for node in nodes:
        args = fx.node.map_arg(node.args, env.__getitem__)
        kwargs = fx.node.map_arg(node.kwargs, env.__getitem__)
        if node.op == "call_module":
            env[node] = model.get_submodule(node.target)(*args, **kwargs)
        elif node.op == "call_function":
            env[node] = node.target(*args, **kwargs)
        elif node.op == "call_method":
            env[node] = getattr(args[0], node.target)(*args[1:], **kwargs)
        elif node.op == "get_attr":
            env[node] = _attr(model, node.target)
        elif node.op == "output":
            return args[0]
    return None


def _build(loaded: LoadedModel, layer: str, n: int | None) -> Suffix | None:
    model = loaded.model
    try:
        with _trace_lock:
            graph = fx.symbolic_trace(model).graph
    except Exception:  # noqa: BLE001 - any network fx cannot trace keeps the whole-network path
        return None
    inputs = [node for node in graph.nodes if node.op == "placeholder"]
    calls = [node for node in graph.nodes if node.op == "call_module" and node.target == layer]
    if len(inputs) != 1 or len(calls) != 1:
        return None
    (source,), (call,) = inputs, calls
    after: set[fx.Node] = set()
    for node in graph.nodes:
        if node is not call and any(a is call or a in after for a in node.all_input_nodes):
            after.add(node)
    output = next(node for node in graph.nodes if node.op == "output")
    if output not in after:
        return None
    before = [node for node in graph.nodes if node is not call and node not in after]
    wanted = {a for node in (call, *after) for a in node.all_input_nodes if a not in after and a is not call}
    x, _ = sample_images(loaded, n, "evaluation")
    step = batch_size(loaded)
    kept, size = [], 0
    with torch.no_grad():
        for batch in x.split(step):
            env: dict[fx.Node, Any] = {source: batch}
            _run(model, before, env)
            kept.append({node: env[node] for node in wanted})
            size += sum(v.numel() * v.element_size() for v in kept[-1].values() if isinstance(v, torch.Tensor))
            if size > KEPT_BYTES:
                return None
    return Suffix(model, call, tuple(node for node in graph.nodes if node in after), tuple(kept), step)


def network_suffix(loaded: LoadedModel, layer: str, n: int | None = None) -> Suffix | None:
    """The network after conv ``layer`` with what it reads from before it kept for the first ``n`` evaluation
    images (built once per model, layer and ``n``), or None where the network cannot be split there."""
    get_conv(loaded, layer)
    return _suffixes.get((loaded.key, layer, n), lambda: _build(loaded, layer, n))
