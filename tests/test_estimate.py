"""Estimates before work: costs equal the library's, chunks stay within their bytes, and decide() runs, asks or
refuses as the limits say; chunked evaluation gives the unchunked answer."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kcp import estimate
from kcp.decomposition import kcp
from kcp.evaluate import evaluate
from kcp.geometry import ConvGeometry
from kcp.kron import make_factor_shape
from kcp.target import LayerTarget

SHAPE = (64, 64, 3, 3)
FS = make_factor_shape(SHAPE)
GEO = ConvGeometry(padding=(1, 1))


def test_costs_are_the_decomposition_s_own():
    result = kcp(torch.randn(*SHAPE, generator=torch.Generator().manual_seed(0)), 3, 4, refine_sweeps=0)
    e = estimate.estimate("kcp", SHAPE, {"kt_rank": 3, "cp_rank": 4}, (8, 8), geometry=GEO, factor_shape=FS)
    assert (e.params, e.macs) == (result.params(), result.macs((8, 8), GEO))
    assert (e.dense_params, e.dense_macs) == (math.prod(SHAPE), math.prod(SHAPE) * 64)
    assert not e.warnings()
    big = estimate.estimate("kcp", SHAPE, {"kt_rank": 192, "cp_rank": 24}, (8, 8), geometry=GEO, factor_shape=FS,
                            images=450)
    assert big.larger_than_dense and big.costlier_than_dense and len(big.warnings()) == 2
    assert big.seconds > 4 * e.seconds and big.peak_bytes <= 2 * estimate.CHUNK_BYTES


def test_an_output_fit_costs_its_bounded_work_on_top_of_the_kernel_fit():
    from kcp.decomposition.outputs import OUTPUT_MAX_ITER, OUTPUT_WINDOW, OUTPUT_WORK

    kw = {"geometry": GEO, "factor_shape": FS}
    ranks = {"kt_rank": 3, "cp_rank": 4}
    kernel = estimate.estimate("kcp", SHAPE, ranks, (8, 8), **kw)
    outputs = estimate.estimate("kcp", SHAPE, ranks, (8, 8), fit="outputs", **kw)
    work = SHAPE[0] * math.prod(SHAPE[1:]) ** 2  # multiply-adds of one C_out x D x D evaluation
    assert OUTPUT_MAX_ITER * work < OUTPUT_WORK  # a small layer runs its whole iteration bound
    assert outputs.seconds - kernel.seconds == pytest.approx(
        estimate.OUTPUT_BASE + OUTPUT_MAX_ITER * work / estimate.FIT_MAC_RATE)
    # A 256-channel layer's iterations are bounded by OUTPUT_WORK (36 of them)...
    mid_work = 256 * 2304**2
    assert estimate.output_fit_seconds((256, 256, 3, 3)) == pytest.approx(
        estimate.OUTPUT_BASE + 36 * mid_work / estimate.FIT_MAC_RATE)
    # ...and a 512-channel one's by the library's floor of two windows, past OUTPUT_WORK (where the estimate once
    # stopped, 4x low).
    wide_work = 512 * 4608**2
    assert OUTPUT_WORK / wide_work < 2 * OUTPUT_WINDOW
    assert estimate.output_fit_seconds((512, 512, 3, 3)) == pytest.approx(
        estimate.OUTPUT_BASE + 2 * OUTPUT_WINDOW * wide_work / estimate.FIT_MAC_RATE)
    # SVD's output fit is a closed form (a whitening): cheaper than the iterative ones on a 64-channel layer.
    assert estimate.output_fit_seconds(SHAPE, "svd") < estimate.output_fit_seconds(SHAPE)
    # A grid fitted to the outputs pays it at every KCP point and every baseline.
    grid_kernel = estimate.grid(SHAPE, [1, 2], [2], (8, 8), baselines=2, **kw)
    grid_outputs = estimate.grid(SHAPE, [1, 2], [2], (8, 8), baselines=2, fit="outputs", **kw)
    extra = estimate.output_fit_seconds(SHAPE)
    assert grid_outputs.seconds - grid_kernel.seconds == pytest.approx(2 * extra + 2 * 2 * extra)


def test_ranks_past_the_layer_s_largest_are_refused():
    with pytest.raises(ValueError, match=r"kt_rank must be between 1 and 192 \(the largest meaningful KT rank for "
                                         r"factor shape 8x8\|8x8, split\), got 193"):
        estimate.estimate("kcp", SHAPE, {"kt_rank": 193, "cp_rank": 1}, (8, 8), factor_shape=FS)


def test_chunks_stay_within_their_bytes():
    for r, k in ((1, 1), (16, 8), (192, 24)):
        stages = estimate.costs.stages("kcp", SHAPE, {"kt_rank": r, "cp_rank": k}, (8, 8), GEO, FS)
        n = estimate.images_per_chunk(stages)
        assert n >= 1 and (n == 1 or n * estimate.per_image_bytes(stages) <= estimate.CHUNK_BYTES)
    # The widest stage of R=192 K=24 holds 110,592 channels of 8x8 floats, in and out: 56.6 MB per image.
    wide = estimate.costs.stages("kcp", SHAPE, {"kt_rank": 192, "cp_rank": 24}, (8, 8), GEO, FS)
    assert estimate.per_image_bytes(wide) >= 2 * 110_592 * 64 * 4


def test_decide_runs_asks_and_refuses():
    limits = estimate.Limits(budget_seconds=10, budget_bytes=2**20, max_seconds=100, max_bytes=2**30)
    make = lambda s, b: estimate.Estimate(s, b, 1, 1, 1, 1)
    assert estimate.decide(make(1, 1), limits).action == "run"
    assert estimate.decide(make(50, 1), limits).action == "confirm"
    assert estimate.decide(make(1, 2**21), limits).action == "confirm"
    assert estimate.decide(make(50, 1), limits, forced=True).action == "run"
    refused = estimate.decide(make(500, 1), limits, forced=True)
    assert refused.action == "refuse" and "over the" in refused.reason
    assert estimate.decide(make(1, 2**31), limits, forced=True).action == "refuse"


def test_chunked_evaluation_gives_the_unchunked_answer(monkeypatch):
    gen = torch.Generator().manual_seed(1)
    conv = torch.nn.Conv2d(16, 16, 3, padding=1)
    inputs = torch.randn(40, 16, 6, 6, generator=gen)
    target = LayerTarget.from_conv(conv, (6, 6), inputs=inputs)
    result = kcp(conv.weight.detach(), 2, 2, refine_sweeps=0)
    reference = F.conv2d(inputs, conv.weight, conv.bias, padding=1).double()
    approx = F.conv2d(inputs, result.reconstruct(), conv.bias, padding=1).double()
    expected = float(((approx - reference).norm() / reference.norm()).detach())
    monkeypatch.setattr("kcp.evaluate.images_per_chunk", lambda stages: 3)  # 14 chunks of 3 (and one of 1)
    row = evaluate(target, result, fidelity=False)
    assert row["output_rel_error"] == pytest.approx(expected, rel=1e-5)
