"""The one schema of a metrics row: its columns, their types, what people call them and what they mean.

A row is what :func:`kcp.evaluate.evaluate` returns for one decomposition of one layer; the sweep writes
rows as CSV and JSON in this column order, the CLI prints them, and the dashboard's cards, tables and
axes take their labels from here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Column:
    """One column. ``kind`` is its Python type (None is allowed for every column: not measured);
    ``label`` names it on axes and in tables, ``title`` on a card; ``log`` says that it spans orders of
    magnitude, so figures draw it on a log axis; ``timing`` marks what a latency measurement fills in."""

    name: str
    kind: type
    label: str
    help: str
    log: bool = False
    title: str = ""
    timing: bool = False


ROW: tuple[Column, ...] = (
    Column("model", str, "model", "zoo name or checkpoint of the network"),
    Column("layer", str, "layer", "the conv layer's name in the network"),
    Column("method", str, "method", "decomposition method (kcp.methods)"),
    Column("fit", str, "fitted to", "what the factors were fitted to: the kernel, or the layer's outputs"),
    Column("calibration_images", int, "calibration images", "images an output fit learned from (never evaluated on)"),
    Column("kt_rank", int, "KT rank R", "number of Kronecker terms (KCP, KT only)"),
    Column("cp_rank", int, "CP rank K", "CP rank of every Kronecker factor (KCP)"),
    Column("rank", int, "rank", "the method's main rank (CP, SVD; KT rank for KT; output rank for Tucker-2)"),
    Column("in_rank", int, "input rank", "Tucker-2 rank on the input channels"),
    Column("out_rank", int, "output rank", "Tucker-2 rank on the output channels"),
    Column("factors", str, "factor shape", "Kronecker factor shape O_A|O_B, I_A|I_B (KCP, KT only)"),
    Column("placement", str, "placement", "where the kernel window goes: split or a-spatial (KCP, KT only)"),
    Column("params", int, "parameters", "weights of the factorised layer, no bias", log=True, title="Parameters"),
    Column("dense_params", int, "dense parameters", "weights of the dense layer, no bias", log=True),
    Column("compression", float, "compression (dense / factorised params)", "dense over factorised parameters",
           log=True),
    Column("macs", int, "MACs per image", "multiply-accumulates for one image (FLOPs = 2 x MACs)", log=True,
           title="MACs per image"),
    Column("dense_macs", int, "dense MACs per image", "multiply-accumulates of the dense layer for one image",
           log=True),
    Column("rel_error", float, "kernel error ‖W−Ŵ‖/‖W‖", "relative Frobenius error of the kernel",
           title="Kernel error"),
    Column("output_rel_error", float, "output error on real activations",
           "‖y − ŷ‖/‖y‖ of the layer's outputs on real input activations", title="Output error"),
    Column("top1_agreement", float, "top-1 agreement with the dense network",
           "share of images where the network with this layer replaced predicts the dense network's class",
           title="Top-1 agreement"),
    Column("top1_changed", int, "images that changed class", "evaluation images whose top-1 class changed"),
    Column("eval_images", int, "evaluation images", "images the output error and top-1 figures are measured on"),
    Column("accuracy", float, "accuracy", "accuracy of the network with this layer replaced (labelled images)"),
    Column("dense_accuracy", float, "dense accuracy", "accuracy of the unchanged network on the same images"),
    Column("latency_ms", float, "latency (ms)", "measured median latency of the factorised layer", log=True,
           title="Latency", timing=True),
    Column("dense_latency_ms", float, "dense latency (ms)", "measured median latency of the dense layer",
           log=True, timing=True),
    Column("device", str, "device", "where latency was measured", timing=True),
    Column("seconds", float, "seconds", "time the decomposition took"),
    Column("sweeps", int, "sweeps", "refinement sweeps (or iterations) the fit ran"),
    Column("converged", bool, "converged", "whether the fit met its stopping rule before its sweep limit"),
    Column("warm_start", bool, "warm start", "whether the fit started from a neighbouring grid point"),
    Column("matched_to", str, "matched to", "the KCP grid points whose budget this baseline matches"),
    Column("error", str, "error", "why the point has no metrics (a failed or lost task), else empty"),
    Column("latency_p10_ms", float, "latency p10 (ms)", "10th percentile of the factorised layer's latency",
           log=True, timing=True),
    Column("latency_p90_ms", float, "latency p90 (ms)", "90th percentile of the factorised layer's latency",
           log=True, timing=True),
    Column("speedup", float, "speed-up over dense", "dense over factorised latency, from one paired measurement",
           log=True, timing=True),
    Column("speedup_low", float, "speed-up, low end", "lower end of the speed-up's confidence interval",
           log=True, timing=True),
    Column("speedup_high", float, "speed-up, high end", "upper end of the speed-up's confidence interval",
           log=True, timing=True),
    Column("latency_verdict", str, "latency verdict", "faster, slower, same, or too noisy to say", timing=True),
)
COLUMNS: tuple[str, ...] = tuple(c.name for c in ROW)
# The columns one latency measurement fills in (a paired timing, or the dense layer's own).
TIMING_COLUMNS: tuple[str, ...] = tuple(c.name for c in ROW if c.timing)
BY_NAME: dict[str, Column] = {c.name: c for c in ROW}


def make_row(**values: Any) -> dict[str, Any]:
    """A row with every column (None where not given), refusing unknown columns and values of the wrong type."""
    unknown = sorted(set(values) - set(BY_NAME))
    if unknown:
        raise ValueError(f"not columns of a metrics row: {', '.join(unknown)} (kcp.schema.ROW lists them)")
    row: dict[str, Any] = {}
    for column in ROW:
        value = values.get(column.name)
        if value is not None:
            value = _typed(column, value)
        row[column.name] = value
    return row


def _typed(column: Column, value: Any) -> Any:
    kind = column.kind
    if kind is bool:
        if not isinstance(value, bool):
            raise TypeError(f"column {column.name!r} takes a bool, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not float(value).is_integer():
            raise TypeError(f"column {column.name!r} takes an integer, got {value!r}")
        return int(value)
    if kind is float:
        number = float(value)
        return number if not math.isnan(number) else None
    return str(value)
