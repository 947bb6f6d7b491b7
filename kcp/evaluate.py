"""Every metric of one decomposition of one layer, as one row (the sweep's rows and the dashboard's cards)."""

from __future__ import annotations

from typing import Any

from torch import nn

from kcp.decomposition import Decomposition
from kcp.estimate import images_per_chunk
from kcp.latency import LatencySettings, paired
from kcp.metrics import output_error as layer_output_error
from kcp.modules import to_module
from kcp.schema import make_row
from kcp.target import LayerTarget

# Output error and network fidelity are properties of the function the factors compute, which every execution
# computes alike (each is tested against F.conv2d); KCP's reconstructed kernel as one conv is the quickest way to push
# hundreds of images through it on a CPU (digits conv4 at R=6 K=7: 0.3 s against 1.6 s for the four-layer chain).
# MACs, parameters and latency stay those of the ``execution`` asked for.
METRIC_EXECUTION = "full"


def module_for(target: LayerTarget, result: Decomposition, execution: str = "layered") -> nn.Module:
    """The module that runs ``result`` in place of the target's conv: its geometry, bias, device and dtype."""
    options = {"execution": execution} if result.method == "kcp" else {}
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
    execution: str = "layered",
    seconds: float | None = None,
) -> dict[str, Any]:
    """Costs, kernel error, output error on the layer's real activations, network fidelity and latency.

    Output error, top-1 agreement and accuracy are measured on the target's evaluation images, never the
    calibration images an output fit learned from. ``fit`` says what the decomposition was fitted to, and
    ``calibration_images`` on how many images (None for a kernel fit); ``top1_changed`` counts the evaluation
    images whose top-1 class changed (of ``eval_images``): the images that decide the agreement.
    The row has the columns of :data:`kcp.schema.ROW`.
    Metrics that the target cannot give (no activations, no network) or that were not asked for are None;
    ``dense_accuracy`` is the unchanged network's accuracy on the same labelled images. Images go through the
    module in chunks sized by :func:`kcp.estimate.images_per_chunk`, so memory stays bounded at any rank.
    Latency is one :func:`kcp.latency.paired` measurement of the dense layer and this module:
    ``dense_latency_ms`` is this row's own dense figure, never one from another measurement.
    """
    ranks = result.ranks
    kcp_path = execution if result.method == "kcp" else "layered"
    info = result.info
    fit = info.get("fit", "kernel")
    row = make_row(
        model=target.model, layer=target.name, method=result.method, fit=fit,
        calibration_images=info.get("calibration_inputs") if fit == "outputs" else None,
        kt_rank=ranks.get("kt_rank"), cp_rank=ranks.get("cp_rank"),
        rank=ranks.get("rank", ranks.get("kt_rank", ranks.get("out_rank"))),
        in_rank=ranks.get("in_rank"), out_rank=ranks.get("out_rank"),
        factors=str(result.factor_shape) if result.factor_shape else "", placement=result.placement or "",
        params=result.params(), dense_params=target.dense_params(), compression=result.compression(),
        macs=result.macs(target.in_hw, target.geometry, kcp_path), dense_macs=target.dense_macs(),
        rel_error=result.rel_error, seconds=None if seconds is None else round(seconds, 4),
        sweeps=info.get("sweeps"), converged=info.get("converged"), warm_start=bool(info.get("warm_start", False)),
    )
    measured = module_for(target, result, METRIC_EXECUTION if result.method == "kcp" else execution)
    chunk = images_per_chunk(result.stages(target.in_hw, target.geometry, False, kcp_path))
    if output_error and target.inputs is not None:
        row["output_rel_error"] = layer_output_error(target.conv, measured, target.inputs, batch=chunk)
        row["eval_images"] = len(target.inputs)
    if fidelity and target.fidelity is not None:
        fid = target.fidelity(measured, batch=chunk)
        row.update(top1_agreement=fid.top1_agreement, accuracy=fid.accuracy, dense_accuracy=fid.baseline_accuracy,
                   eval_images=fid.n_images, top1_changed=fid.n_changed)
    if latency is not None:
        module = module_for(target, result, execution)
        pair = paired(target.conv, module, (target.kernel_shape[1], *target.in_hw), latency)
        row.update(latency_ms=pair.factorised.median_ms, dense_latency_ms=pair.dense.median_ms,
                   latency_p10_ms=pair.factorised.p10_ms, latency_p90_ms=pair.factorised.p90_ms,
                   speedup=pair.speedup, speedup_low=pair.speedup_low, speedup_high=pair.speedup_high,
                   latency_verdict=pair.verdict, device=pair.factorised.device_name)
    return row
