"""Applying a plan: a new network with the chosen convs replaced, and what it costs and how well it does."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kcp import zoo
from kcp.geometry import ConvGeometry
from kcp.latency import LatencySettings, measure
from kcp.metrics import counted_macs
from kcp.modules import FactorisedConv2d, KCPConv2d, to_module
from kcp.network.plan import Plan
from kcp.zoo.fidelity import logits


def apply_plan(loaded: zoo.LoadedModel, plan: Plan, *, execution: str = "layered") -> nn.Module:
    """A deep copy of ``loaded.model`` (in eval mode) with every non-dense conv of ``plan`` replaced by the module
    that runs its decomposition (the conv's geometry and bias carried over). ``loaded.model`` is not changed."""
    if plan.weights_id != loaded.weights_id:
        raise ValueError(f"the plan is for {plan.model} with other weights; make the plan for {loaded.name}")
    net = copy.deepcopy(loaded.model)
    for layer in plan.layers:
        if layer.decomposition is None:
            continue
        conv = zoo.get_conv(loaded, layer.name)
        options = {"execution": execution} if layer.method == "kcp" else {}
        module = to_module(layer.decomposition.to(conv.weight.device, conv.weight.dtype),
                           geometry=ConvGeometry.from_conv(conv), bias=conv.bias, **options)
        net.set_submodule(layer.name, module)
    return net.eval()


def set_execution(net: nn.Module, execution: str) -> None:
    """Run every KCP module of ``net`` on ``execution`` (all paths give the same outputs)."""
    for module in net.modules():
        if isinstance(module, KCPConv2d):
            module.execution = execution


def conv_params(net: nn.Module) -> int:
    """Parameters of the network's convs, dense and factorised (biases not counted, as in the plan)."""
    total = 0
    for module in net.modules():
        if isinstance(module, FactorisedConv2d):
            total += sum(p.numel() for n, p in module.named_parameters() if n != "bias")
        elif isinstance(module, nn.Conv2d):
            total += module.weight.numel()
    return total


def predictions(net: nn.Module, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """``net``'s logits on ``x`` in eval mode (its training mode restored afterwards)."""
    was_training = net.training
    net.eval()
    try:
        return logits(net, x, batch)
    finally:
        net.train(was_training)


def scores(out: torch.Tensor, labels: torch.Tensor | None, reference: torch.Tensor) -> dict[str, float | None]:
    """Accuracy (where there are labels) and top-1 agreement with the reference logits."""
    return {
        "accuracy": None if labels is None else (out.argmax(1) == labels).float().mean().item(),
        "top1_agreement": (out.argmax(1) == reference.argmax(1)).float().mean().item(),
    }


@dataclass(frozen=True)
class NetworkCosts:
    """Whole-network figures of one network: parameters, counted MACs for one image and measured latency."""

    params: int
    conv_params: int
    macs: int
    latency_ms: float | None
    device: str | None

    def as_row(self, prefix: str = "") -> dict[str, Any]:
        return {f"{prefix}params": self.params, f"{prefix}conv_params": self.conv_params, f"{prefix}macs": self.macs,
                f"{prefix}latency_ms": self.latency_ms}


def network_costs(net: nn.Module, input_size: tuple[int, int, int],
                  latency: LatencySettings | None = None) -> NetworkCosts:
    """Counted MACs (``FlopCounterMode``) and, when ``latency`` is given, measured end-to-end latency."""
    timing = None if latency is None else measure(net, input_size, latency)
    return NetworkCosts(sum(p.numel() for p in net.parameters()), conv_params(net), counted_macs(net, input_size),
                        None if timing is None else timing.median_ms, None if timing is None else timing.device_name)


def default_latency() -> LatencySettings:
    """Batch-1 fp32 latency on CUDA where there is a GPU, else on the CPU."""
    return LatencySettings(device="cuda" if torch.cuda.is_available() else "cpu", runs=20)

