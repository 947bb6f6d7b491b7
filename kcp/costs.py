"""Analytic parameters and multiply-accumulates (MACs) of every method, stage by stage.

The stages are exactly the ones the modules in :mod:`kcp.modules` run, in the same order of
contractions, so ``FlopCounterMode`` on a module counts ``2 * macs`` (tests check it). Modes of
size one carry no parameters (their factor is absorbed into another), and a stage with nothing to
multiply (a 1-wide spatial stage) costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from kcp import methods
from kcp.geometry import ConvGeometry
from kcp.kron import FactorShape

EXECUTIONS = ("layered", "dense")


@dataclass(frozen=True)
class Stage:
    """One layer of a factorised module: what it does, tensor shapes (C, H, W), and its costs."""

    name: str
    op: str
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    params: int
    macs: int


def stages(
    method: str,
    kernel_shape: tuple[int, int, int, int],
    ranks: dict[str, int],
    in_hw: tuple[int, int],
    geometry: ConvGeometry | None = None,
    factor_shape: FactorShape | None = None,
    bias: bool = False,
    execution: str = "layered",
) -> list[Stage]:
    """The stages of ``method`` at ``ranks`` on an ``in_hw`` input, with their parameters and MACs."""
    spec = methods.get(method)
    geometry = geometry or ConvGeometry()
    out_hw = geometry.out_hw(in_hw, kernel_shape[2:])
    layer = _Layer(tuple(kernel_shape), tuple(in_hw), out_hw, kernel_shape[0] if bias else 0)
    return spec.stages(layer, ranks, factor_shape, execution)


@dataclass(frozen=True)
class _Layer:
    """What every stage function needs: kernel shape, input and output size, and the bias parameters."""

    kernel_shape: tuple[int, int, int, int]
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    bias: int


@methods.implements("dense", "stages")
def _dense_stages(layer: _Layer, _ranks, _fs, _path) -> list[Stage]:
    out_c, in_c, kh, kw = layer.kernel_shape
    ho, wo = layer.out_hw
    return [Stage(f"conv {kh}x{kw}", "conv", (in_c, *layer.in_hw), (out_c, ho, wo),
                  out_c * in_c * kh * kw + layer.bias, out_c * in_c * kh * kw * ho * wo)]


@methods.implements("cp", "stages")
def _cp_stages(layer: _Layer, ranks, _fs, _path) -> list[Stage]:
    out_c, in_c, kh, kw = layer.kernel_shape
    (h, w), (ho, wo) = layer.in_hw, layer.out_hw
    r = ranks["rank"]
    return [
        Stage("in 1x1", "conv 1x1", (in_c, h, w), (r, h, w), in_c * r, in_c * r * h * w),
        *_spatial_stages(r, kh, kw, (h, w), (ho, wo), lambda k: r * k if k > 1 else 0),
        Stage("out 1x1", "conv 1x1", (r, ho, wo), (out_c, ho, wo), r * out_c + layer.bias, r * out_c * ho * wo),
    ]


@methods.implements("tucker2", "stages")
def _tucker2_stages(layer: _Layer, ranks, _fs, _path) -> list[Stage]:
    out_c, in_c, kh, kw = layer.kernel_shape
    (h, w), (ho, wo) = layer.in_hw, layer.out_hw
    ri, ro = ranks["in_rank"], ranks["out_rank"]
    return [
        Stage("in 1x1", "conv 1x1", (in_c, h, w), (ri, h, w), in_c * ri, in_c * ri * h * w),
        Stage(f"core {kh}x{kw}", "conv", (ri, h, w), (ro, ho, wo), kh * kw * ri * ro, kh * kw * ri * ro * ho * wo),
        Stage("out 1x1", "conv 1x1", (ro, ho, wo), (out_c, ho, wo), ro * out_c + layer.bias, ro * out_c * ho * wo),
    ]


@methods.implements("svd", "stages")
def _svd_stages(layer: _Layer, ranks, _fs, _path) -> list[Stage]:
    out_c, in_c, kh, kw = layer.kernel_shape
    (h, w), (ho, wo) = layer.in_hw, layer.out_hw
    r = ranks["rank"]
    return [
        Stage(f"conv {kh}x{kw}", "conv", (in_c, h, w), (r, ho, wo), r * in_c * kh * kw, r * in_c * kh * kw * ho * wo),
        Stage("out 1x1", "conv 1x1", (r, ho, wo), (out_c, ho, wo), r * out_c + layer.bias, r * out_c * ho * wo),
    ]


def _spatial_stages(width, kh, kw, in_hw, out_hw, params_for) -> list[Stage]:
    """Depthwise k_h x 1 then 1 x k_w over ``width`` channels (skipped MACs where the size is 1)."""
    h, w = in_hw
    ho, wo = out_hw
    return [
        Stage(f"dw {kh}x1", "depthwise", (width, h, w), (width, ho, w), params_for(kh),
              width * kh * ho * w if kh > 1 else 0),
        Stage(f"dw 1x{kw}", "depthwise", (width, ho, w), (width, ho, wo), params_for(kw),
              width * kw * ho * wo if kw > 1 else 0),
    ]


@methods.implements("kcp", "stages")
def _kcp_stages(layer: _Layer, ranks, fs: FactorShape, execution) -> list[Stage]:
    kernel_shape, in_hw, out_hw, nb = layer.kernel_shape, layer.in_hw, layer.out_hw, layer.bias
    r, k = ranks["kt_rank"], ranks["cp_rank"]
    if fs is None:
        raise ValueError("KCP costs need the factor shape")
    if execution not in EXECUTIONS:
        raise ValueError(f"execution must be one of {', '.join(EXECUTIONS)}, got {execution!r}")
    out_c, in_c, kh, kw = kernel_shape
    h, w = in_hw
    ho, wo = out_hw
    width = r * k * k
    if execution == "layered":
        l1_macs = h * w * r * k * (in_c + k * min(fs.in_a, fs.in_b))
        l4_macs = ho * wo * r * k * (out_c + k * min(fs.out_a, fs.out_b))
    else:
        l1_macs = h * w * in_c * width
        l4_macs = ho * wo * width * out_c

    def spatial_params(size_a: int, size_b: int) -> int:
        return r * k * sum(s for s in (size_a, size_b) if s > 1)

    l2, l3 = _spatial_stages(width, kh, kw, in_hw, out_hw, lambda _: 0)
    return [
        Stage("L1 channels in", "contraction", (in_c, h, w), (width, h, w), r * k * (fs.in_a + fs.in_b), l1_macs),
        Stage(l2.name, l2.op, l2.in_shape, l2.out_shape, spatial_params(fs.ka_h, fs.kb_h), l2.macs),
        Stage(l3.name, l3.op, l3.in_shape, l3.out_shape, spatial_params(fs.ka_w, fs.kb_w), l3.macs),
        Stage("L4 channels out", "contraction", (width, ho, wo), (out_c, ho, wo),
              r * k * (fs.out_a + fs.out_b) + nb, l4_macs),
    ]


@methods.implements("kt", "stages")
def _kt_stages(layer: _Layer, ranks, fs: FactorShape, _path) -> list[Stage]:
    """GKPD: conv with B (I_A folded into the batch), then conv with A (O_B folded into the batch)."""
    kernel_shape, in_hw, out_hw, nb = layer.kernel_shape, layer.in_hw, layer.out_hw, layer.bias
    r = ranks["kt_rank"]
    if fs is None:
        raise ValueError("KT costs need the factor shape")
    out_c, in_c, _, _ = kernel_shape
    h, w = in_hw
    ho, wo = out_hw
    # B owns the columns under `split` (it has the k_w extent) and nothing under `a-spatial`.
    b_hw = (h, wo) if fs.placement == "split" else (h, w)
    mid = fs.in_a * r * fs.out_b
    size_a = fs.out_a * fs.in_a * fs.ka_h * fs.ka_w
    size_b = fs.out_b * fs.in_b * fs.kb_h * fs.kb_w
    return [
        Stage(f"B conv {fs.kb_h}x{fs.kb_w}", "conv", (in_c, h, w), (mid, *b_hw), r * size_b,
              in_c * r * fs.out_b * fs.kb_h * fs.kb_w * b_hw[0] * b_hw[1]),
        Stage(f"A conv {fs.ka_h}x{fs.ka_w}", "conv", (mid, *b_hw), (out_c, ho, wo), r * size_a + nb,
              out_c * fs.in_a * r * fs.ka_h * fs.ka_w * ho * wo),
    ]


def params(method: str, kernel_shape, ranks, factor_shape=None, bias: bool = False) -> int:
    """Parameter count of ``method`` at ``ranks`` (independent of the input size)."""
    kh, kw = kernel_shape[2], kernel_shape[3]
    in_hw = (kh, kw)
    return sum(s.params for s in stages(method, kernel_shape, ranks, in_hw, None, factor_shape, bias))


def macs(method: str, kernel_shape, ranks, in_hw, geometry=None, factor_shape=None, execution="layered") -> int:
    """Multiply-accumulates of one image through ``method`` at ``ranks`` (FLOPs are twice this)."""
    return sum(s.macs for s in stages(method, kernel_shape, ranks, in_hw, geometry, factor_shape, False, execution))

