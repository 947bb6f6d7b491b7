"""Time and peak memory of a request before it runs, and whether to run it, ask first, or refuse.

A request is one decomposition of one layer with what is measured on it: output error on N real images,
network top-1 on them, latency at a batch. Everything is predicted from the kernel's shape, the ranks, the
images and the batch, with constants calibrated on this project's machine (2-core AMD EPYC, one thread per
job, other jobs running: the figures lean pessimistic; the measurements are in
``bench/results/estimate_calibration_cpu.json``). The app and the CLI both decide with :func:`decide`: past a
budget they ask first (the CLI: ``--force``), past a hard ceiling they refuse with the reason.

Evaluation runs in chunks of images whose intermediate tensors stay within ``CHUNK_BYTES``
(:func:`images_per_chunk`), so a huge module (R = 192, K = 24 on a 64-channel layer: 110,592 middle channels)
costs time, not memory.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from kcp import costs
from kcp.decomposition import REFINE_SWEEPS
from kcp.decomposition.validate import check_rank
from kcp.geometry import ConvGeometry
from kcp.kron import FactorShape, max_cp_rank, max_kt_rank
from kcp.latency import DTYPES, LatencySettings

# Calibration: bench/bench_estimate.py measures every term below (one torch thread, random kernels, 32x32 to
# 512x512 layers) and fits them by non-negative least squares on relative error, times 2 (other jobs share the
# cores); bench/results/estimate_calibration_cpu.json holds the rows and the predictions' ratios.
# KCP refinement sweep = SWEEP_BASE + SWEEP_PER_WEIGHT |W| + SWEEP_RK2 (RK)^2 + SWEEP_RK3 (RK)^3 seconds,
# two-stage KCP = TWO_STAGE_BASE + TWO_STAGE_PER_WEIGHT |W| + TWO_STAGE_PER_TERM R (1 + K / 16) seconds.
SWEEP_BASE, SWEEP_PER_WEIGHT, SWEEP_RK2, SWEEP_RK3 = 4e-3, 4e-8, 6e-7, 5e-11
TWO_STAGE_BASE, TWO_STAGE_PER_WEIGHT, TWO_STAGE_PER_TERM = 0.07, 4.7e-7, 6e-3
# Baselines (Tucker-2 HOSVD and HOOI, truncated SVDs, CP-ALS): per weight and per weight x rank; CP-ALS runs
# until it converges, which on some kernels takes its whole iteration bound (measured up to 7e-6 s per weight x
# rank on a random 64x64x3x3 kernel at rank 36): CP_PER_WEIGHT_RANK is the typical case, not that one.
BASELINE_BASE, BASELINE_PER_WEIGHT, BASELINE_PER_WEIGHT_RANK = 0.1, 2e-6, 1e-7
CP_PER_WEIGHT_RANK = 1e-6
# Output fits: OUTPUT_BASE + their bounded work (kcp.decomposition.outputs.output_iterations) at FIT_MAC_RATE; SVD's
# closed form costs the whitening (a D x D Cholesky and SVD, about D^3).
OUTPUT_BASE, FIT_MAC_RATE = 0.1, 1e10
# Running modules: multiply-accumulates per second by kind of stage (dense convolutions run at BLAS speed; the
# thin contractions of a KCP chain far slower), tensor elements written per second, and a fixed cost per stage
# and image. MAC_RATE is for the kinds the calibration did not see.
MAC_RATE = 1.0e9
MAC_RATES = {"conv": 1.2e10, "conv 1x1": 2e10, "contraction": 1.2e9}
ELEMENT_RATE = 1.2e8
STAGE_SECONDS = 1e-5
# Intermediate tensors of one chunk of images during evaluation.
CHUNK_BYTES = 256 * 2**20
FLOAT32 = 4
GiB = 2**30


@dataclass(frozen=True)
class Limits:
    """Past ``budget_*`` a request needs a confirmation; past ``max_*`` it is refused (``max_bytes`` is also
    capped at half the memory free when it is checked)."""

    budget_seconds: float
    budget_bytes: int
    max_seconds: float
    max_bytes: int


# The live app: a point should take seconds; minutes need a yes; a quarter of an hour is refused.
APP_LIMITS = Limits(budget_seconds=15.0, budget_bytes=1 * GiB, max_seconds=900.0, max_bytes=4 * GiB)
# A rank grid in the app: minutes are normal (it shows progress and can be cancelled); over ten need a yes, an
# hour is refused.
GRID_LIMITS = Limits(budget_seconds=600.0, budget_bytes=1 * GiB, max_seconds=3600.0, max_bytes=4 * GiB)
# The command line: sweeps legitimately take minutes; --force lifts the budget, never the ceiling.
CLI_LIMITS = Limits(budget_seconds=1800.0, budget_bytes=2 * GiB, max_seconds=6 * 3600.0, max_bytes=4 * GiB)


@dataclass(frozen=True)
class Estimate:
    """Predicted seconds and peak bytes of a request, with its costs next to the dense layer's."""

    seconds: float
    peak_bytes: int
    params: int
    dense_params: int
    macs: int
    dense_macs: int
    parts: dict[str, float] = field(default_factory=dict)  # seconds per phase: decompose, evaluate, latency

    @property
    def larger_than_dense(self) -> bool:
        return self.params > self.dense_params

    @property
    def costlier_than_dense(self) -> bool:
        return self.macs > self.dense_macs

    def describe(self) -> str:
        """'about 40 s and 1.2 GB (decompose 14 s, evaluate 26 s)'."""
        parts = ", ".join(f"{k} {_seconds(v)}" for k, v in self.parts.items() if v >= 0.05)
        return f"about {_seconds(self.seconds)} and {_bytes(self.peak_bytes)}" + (f" ({parts})" if parts else "")

    def warnings(self) -> list[str]:
        """What makes this point worse than keeping the dense layer."""
        notes = []
        if self.larger_than_dense:
            notes.append(f"{self.params / self.dense_params:.1f}x the dense layer's parameters")
        if self.costlier_than_dense:
            notes.append(f"{self.macs / self.dense_macs:.1f}x the dense layer's MACs")
        return notes

    def __add__(self, other: Estimate) -> Estimate:
        parts = {k: self.parts.get(k, 0.0) + other.parts.get(k, 0.0) for k in {**self.parts, **other.parts}}
        return Estimate(self.seconds + other.seconds, max(self.peak_bytes, other.peak_bytes),
                        max(self.params, other.params), self.dense_params, max(self.macs, other.macs),
                        self.dense_macs, parts)


@dataclass(frozen=True)
class Decision:
    """``action`` is "run", "confirm" (past the budget) or "refuse" (past the ceiling); ``reason`` says why."""

    action: str
    reason: str
    estimate: Estimate


def available_memory() -> int:
    """Bytes the kernel says are available now (MemAvailable), or 8 GiB where it cannot say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * GiB


def decide(estimate: Estimate, limits: Limits, *, forced: bool = False) -> Decision:
    """Run, ask first, or refuse: the ceiling binds even when ``forced``; the budget only when not."""
    max_bytes = min(limits.max_bytes, available_memory() // 2)
    what = estimate.describe()
    if estimate.peak_bytes > max_bytes:
        return Decision("refuse", f"this would need {what}: over the {_bytes(max_bytes)} of memory one request may "
                                  f"take here. Lower the ranks, the images or the batch.", estimate)
    if estimate.seconds > limits.max_seconds:
        return Decision("refuse", f"this would take {what}: over the {_seconds(limits.max_seconds)} one request may "
                                  f"take here. Lower the ranks, the images or the batch.", estimate)
    over = []
    if estimate.seconds > limits.budget_seconds:
        over.append(f"{_seconds(limits.budget_seconds)}")
    if estimate.peak_bytes > limits.budget_bytes:
        over.append(f"{_bytes(limits.budget_bytes)}")
    if over and not forced:
        return Decision("confirm", f"this would take {what}, over the usual {' and '.join(over)}", estimate)
    return Decision("run", f"estimated {what}", estimate)


def per_image_bytes(stages: Sequence[costs.Stage]) -> int:
    """Bytes one image holds while a module runs and its output is compared in float64: the widest stage's input
    and output in float32, and the final output twice in float64 (candidate and reference)."""
    widest = max((math.prod(s.in_shape) + math.prod(s.out_shape) for s in stages), default=0)
    return FLOAT32 * widest + 16 * math.prod(stages[-1].out_shape) if stages else 0


# Refinement sweeps a KCP fit typically runs before its window rule stops it (measured on digits-cnn conv4 and
# CIFAR ResNet kernels: 10 to 600 sweeps, most under 50); a point that runs longer can be stopped in the app.
TYPICAL_SWEEPS = 50


def images_per_chunk(stages: Sequence[costs.Stage], chunk_bytes: int = CHUNK_BYTES, most: int = 512) -> int:
    """How many images one evaluation chunk may hold so that its tensors stay within ``chunk_bytes``."""
    return max(1, min(most, chunk_bytes // max(per_image_bytes(stages), 1)))


def decompose_seconds(method: str, kernel_shape: tuple[int, int, int, int], ranks: dict[str, int],
                      refine_sweeps: int = REFINE_SWEEPS, fit: str = "kernel") -> float:
    """Predicted seconds of one decomposition. Refinement stops once it converges, which it typically does long
    before ``refine_sweeps``: the prediction counts at most :data:`TYPICAL_SWEEPS` of them. ``fit="outputs"`` adds
    the refinement on the output objective (:func:`output_fit_seconds`)."""
    if method == "dense":
        return 0.0
    extra = output_fit_seconds(kernel_shape, method) if fit == "outputs" else 0.0
    return extra + _kernel_fit_seconds(method, kernel_shape, ranks, refine_sweeps)


def output_fit_seconds(kernel_shape: tuple[int, int, int, int], method: str = "kcp") -> float:
    """Predicted seconds of the output-objective refinement after the kernel fit: the library's iteration bound
    (:func:`kcp.decomposition.outputs.output_iterations`) of ``C_out x D x D`` products, and a block-ALS sweep or a
    preconditioned L-BFGS iteration costs a few such products."""
    from kcp.decomposition.outputs import output_iterations

    out_c, dim = kernel_shape[0], math.prod(kernel_shape[1:])
    if method == "svd":
        return OUTPUT_BASE + dim**3 / FIT_MAC_RATE
    work = out_c * dim * dim
    return OUTPUT_BASE + output_iterations(work) * work / FIT_MAC_RATE


def _kernel_fit_seconds(method: str, kernel_shape: tuple[int, int, int, int], ranks: dict[str, int],
                        refine_sweeps: int) -> float:
    weights = math.prod(kernel_shape)
    if method == "kcp":
        from kcp.decomposition.refine import JOINT_LIMIT

        r, k = ranks["kt_rank"], ranks["cp_rank"]
        rk = r * k
        two_stage = TWO_STAGE_BASE + TWO_STAGE_PER_WEIGHT * weights + TWO_STAGE_PER_TERM * r * (1 + k / 16)
        sweeps = min(refine_sweeps, TYPICAL_SWEEPS) if rk <= JOINT_LIMIT else 0
        sweep = SWEEP_BASE + SWEEP_PER_WEIGHT * weights + SWEEP_RK2 * rk**2 + SWEEP_RK3 * rk**3
        return two_stage + sweeps * sweep
    rank = max(ranks.values(), default=1)
    per_weight_rank = BASELINE_PER_WEIGHT_RANK + (CP_PER_WEIGHT_RANK if method == "cp" else 0.0)
    return BASELINE_BASE + BASELINE_PER_WEIGHT * weights + per_weight_rank * weights * rank


def run_seconds(stages: Sequence[costs.Stage], images: int) -> float:
    """Predicted seconds to run a module over ``images`` images: per stage, its MACs at its kind's rate
    (:data:`MAC_RATES`) and the elements it writes."""
    return images * sum(s.macs / MAC_RATES.get(s.op, MAC_RATE) + math.prod(s.out_shape) / ELEMENT_RATE
                        + STAGE_SECONDS for s in stages)


def latency_seconds(stages: Sequence[costs.Stage], dense: Sequence[costs.Stage], settings: LatencySettings) -> float:
    """Predicted seconds of a paired latency measurement (at most ``MAX_ROUNDS_FACTOR * runs`` rounds)."""
    from kcp.latency import MAX_ROUNDS_FACTOR

    calls = settings.warmup + 1 + MAX_ROUNDS_FACTOR * settings.runs
    both = run_seconds(stages, settings.batch) + run_seconds(dense, settings.batch)
    return calls * both + 2 * settings.min_run_time * MAX_ROUNDS_FACTOR


def latency_bytes(stages: Sequence[costs.Stage], dense: Sequence[costs.Stage], settings: LatencySettings) -> int:
    """Peak bytes of a timed batch: the widest stage's input and output of either module, at the dtype's size."""
    size = DTYPES[settings.dtype].itemsize
    widest = max(math.prod(s.in_shape) + math.prod(s.out_shape) for s in [*stages, *dense])
    return settings.batch * widest * size


def estimate(
    method: str,
    kernel_shape: tuple[int, int, int, int],
    ranks: dict[str, int],
    in_hw: tuple[int, int],
    *,
    geometry: ConvGeometry | None = None,
    factor_shape: FactorShape | None = None,
    refine_sweeps: int = REFINE_SWEEPS,
    images: int = 0,
    network_macs: int = 0,
    latency: LatencySettings | None = None,
    execution: str = "layered",
    fit: str = "kernel",
) -> Estimate:
    """Seconds and peak bytes of decomposing one layer at ``ranks`` (fitted as ``fit`` says) and measuring it:
    output error on ``images`` images, the network on them where ``network_macs`` (per image, the rest of the
    network) is given, latency where ``latency`` is. Known before anything runs."""
    if method == "kcp" and factor_shape is not None:
        where = f"for factor shape {factor_shape}, {factor_shape.placement}"  # kcp()'s own words
        check_rank("kt_rank", ranks["kt_rank"], max_kt_rank(factor_shape), f"the largest meaningful KT rank {where}")
        check_rank("cp_rank", ranks["cp_rank"], max_cp_rank(factor_shape),
                   f"the largest meaningful CP rank of a factor {where}")
    stages = costs.stages(method, kernel_shape, ranks, in_hw, geometry, factor_shape, False, execution)
    dense = costs.stages("dense", kernel_shape, {}, in_hw, geometry)
    parts = {"decompose": decompose_seconds(method, kernel_shape, ranks, refine_sweeps, fit), "evaluate": 0.0,
             "latency": 0.0}
    weights = math.prod(kernel_shape)
    from kcp.decomposition.refine import JOINT_LIMIT

    rk = ranks.get("kt_rank", 1) * ranks.get("cp_rank", 1) if method == "kcp" else max(ranks.values(), default=1)
    # The kernel and R copies of it in float64, and (when refinement runs) the joint RK x RK systems.
    joint = 8 * 8 * rk**2 if method != "kcp" or (refine_sweeps and rk <= JOINT_LIMIT) else 0
    peak = 16 * weights * (4 + ranks.get("kt_rank", 1)) + joint
    if images:
        # kcp.evaluate pushes the images through KCP's reconstructed kernel (one conv, the dense layer's cost).
        module = run_seconds(dense if method == "kcp" else stages, images)
        parts["evaluate"] = module + run_seconds(dense, images)
        if network_macs:
            # The rest of the network: dense convolutions, mostly.
            parts["evaluate"] += module + images * network_macs / MAC_RATES.get("conv", MAC_RATE)
        peak = max(peak, min(images, images_per_chunk(stages)) * per_image_bytes(stages))
    if latency is not None:
        parts["latency"] = latency_seconds(stages, dense, latency)
        peak = max(peak, latency_bytes(stages, dense, latency))
    return Estimate(seconds=sum(parts.values()), peak_bytes=int(peak),
                    params=sum(s.params for s in stages), dense_params=weights,
                    macs=sum(s.macs for s in stages), dense_macs=sum(s.macs for s in dense), parts=parts)


def grid(
    kernel_shape: tuple[int, int, int, int],
    kt_ranks: Sequence[int],
    cp_ranks: Sequence[int],
    in_hw: tuple[int, int],
    *,
    baselines: int = 0,
    latency: LatencySettings | None = None,
    **options,
) -> Estimate:
    """A KCP grid with ``baselines`` baselines at each point's budget and the dense row; ``options`` as for
    :func:`estimate`. A baseline at a KCP point's budget is a thin module: it is counted as evaluating the dense
    layer once more (and timing it, with ``latency``)."""
    dense = estimate("dense", kernel_shape, {}, in_hw, latency=latency, **options)
    per_baseline = dense.parts["evaluate"] + dense.parts["latency"] + BASELINE_BASE
    if options.get("fit") == "outputs":
        per_baseline += output_fit_seconds(kernel_shape)
    total = dense
    for r in kt_ranks:
        for k in cp_ranks:
            point = estimate("kcp", kernel_shape, {"kt_rank": r, "cp_rank": k}, in_hw, latency=latency, **options)
            extra = per_baseline * baselines
            total = total + point + Estimate(extra, 0, 0, point.dense_params, 0, point.dense_macs, {"baselines": extra})
    return total


def _seconds(s: float) -> str:
    if s < 1:
        return f"{s:.1f} s"
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"

