"""Every metric of one decomposition of one layer, as one row (the sweep's rows and the dashboard's cards)."""

from __future__ import annotations

from typing import Any

from torch import nn

from kcp.decompose import Decomposition
from kcp.latency import LatencySettings, measure
from kcp.metrics import output_error as layer_output_error
from kcp.modules import to_module
from kcp.schema import make_row
from kcp.target import LayerTarget


def module_for(target: LayerTarget, result: Decomposition, channel_path: str = "layered") -> nn.Module:
    """The module that runs ``result`` in place of the target's conv: its geometry, bias, device and dtype."""
    options = {"channel_path": channel_path} if result.method == "kcp" else {}
    weight = target.conv.weight
    return to_module(result.to(weight.device, weight.dtype), geometry=target.geometry, bias=target.conv.bias,
                     **options).eval()


def evaluate(
    target: LayerTarget,
    result: Decomposition,
    *,
    output_error: bool = True,
    fidelity: bool = True,
    latency: LatencySettings | None = None,
    dense_latency_ms: float | None = None,
    channel_path: str = "layered",
    seconds: float | None = None,
) -> dict[str, Any]:
    """Costs, kernel error, output error on the layer's real activations, network fidelity and latency.

    The row has the columns of :data:`kcp.schema.ROW`.

    Metrics that the target cannot give (no activations, no network) or that were not asked for are None;
    ``dense_accuracy`` is the unchanged network's accuracy on the same labelled images.
    """
    ranks = result.ranks
    kcp_path = channel_path if result.method == "kcp" else "layered"
    row = make_row(
        model=target.model, layer=target.name, method=result.method,
        kt_rank=ranks.get("kt_rank"), cp_rank=ranks.get("cp_rank"),
        rank=ranks.get("rank", ranks.get("kt_rank", ranks.get("out_rank"))),
        in_rank=ranks.get("in_rank"), out_rank=ranks.get("out_rank"),
        factors=str(result.factor_shape) if result.factor_shape else "", placement=result.placement or "",
        params=result.params(), dense_params=target.dense_params(), compression=result.compression(),
        macs=result.macs(target.in_hw, target.geometry, kcp_path), dense_macs=target.dense_macs(),
        rel_error=result.rel_error, dense_latency_ms=dense_latency_ms,
        seconds=None if seconds is None else round(seconds, 4), sweeps=result.info.get("sweeps"),
        warm_start=bool(result.info.get("warm_start", False)),
    )
    module = module_for(target, result, channel_path)
    if output_error and target.inputs is not None:
        row["output_rel_error"] = layer_output_error(target.conv, module, target.inputs)
    if fidelity and target.fidelity is not None:
        fid = target.fidelity(module)
        row.update(top1_agreement=fid.top1_agreement, accuracy=fid.accuracy, dense_accuracy=fid.baseline_accuracy)
    if latency is not None:
        timing = measure(module, (target.kernel_shape[1], *target.in_hw), latency)
        row.update(latency_ms=timing.median_ms, device=timing.device_name)
    return row
