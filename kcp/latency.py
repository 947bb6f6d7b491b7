"""Measured latency of a layer: CUDA events on a GPU, ``torch.utils.benchmark`` on the CPU.

Latency is always measured, never derived from FLOPs. A process-wide lock makes sure only one
measurement runs at a time, so concurrent users (dashboard sessions, sweep threads) do not disturb
each other's figures. A comparison with the dense layer is :func:`paired`: both are timed in the same
call, in alternating blocks, so a busy spell of the machine slows both alike; its verdict is "faster",
"slower" or "too noisy to tell", from a confidence interval of the paired speed-ups, never from two
figures taken at different times.
"""

from __future__ import annotations

import copy
import logging
import math
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

# torch.utils.benchmark pulls in cpp_extension, which warns on a CUDA build with no CUDA runtime.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
from torch.utils import benchmark  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_LOCK = threading.Lock()


@dataclass(frozen=True)
class LatencySettings:
    """Where and how a layer is timed."""

    device: str = "cpu"
    dtype: str = "fp32"
    batch: int = 1
    channels_last: bool = False
    cuda_graph: bool = False
    runs: int = 30
    warmup: int = 5
    min_run_time: float = 0.2
    threads: int = 0  # CPU threads for the timing; 0 means torch's current setting

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError("device 'cuda' was asked for, but no CUDA GPU is available here; use 'cpu'")
        if self.cuda_graph and not self.device.startswith("cuda"):
            raise ValueError("CUDA-graph replay needs device 'cuda'")
        if self.batch < 1 or self.runs < 1 or self.warmup < 0 or self.threads < 0:
            raise ValueError(
                f"batch and runs must be >= 1 and warmup >= 0, got {self.batch}, {self.runs}, {self.warmup}"
            )


@dataclass(frozen=True)
class Timing:
    """One measurement: median and spread in milliseconds, with everything that shaped it."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int
    device: str
    device_name: str
    dtype: str
    batch: int
    channels_last: bool
    cuda_graph: bool
    threads: int
    cudnn_benchmark: bool
    torch_version: str


def device_name(device: str) -> str:
    """A human name for the device ("NVIDIA H200", or the CPU's model and thread count)."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"CPU {cpu} ({torch.get_num_threads()} threads)"


def _prepare(module: nn.Module, in_shape: tuple[int, int, int], settings: LatencySettings):
    dtype = DTYPES[settings.dtype]
    layout = torch.channels_last if settings.channels_last else torch.contiguous_format
    mod = copy.deepcopy(module).to(device=settings.device, dtype=dtype, memory_format=layout).eval()
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(settings.batch, *in_shape, generator=gen).to(settings.device, dtype)
    return mod, x.contiguous(memory_format=layout)


def percentiles(samples: list[float]) -> tuple[float, float, float]:
    """Median, 10th and 90th percentile of timing samples."""
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]
    return statistics.median(ordered), pick(0.1), pick(0.9)


def cuda_samples(fn: Callable[[], object], warmup: int, runs: int, graph: bool = False) -> list[float]:
    """Per-call times of ``fn()`` in ms from CUDA events recorded back to back (one sync at the end),
    after ``warmup`` calls; with ``graph`` the call is captured once and its CUDA graph replayed."""
    for _ in range(max(warmup, 1)):
        fn()
    torch.cuda.synchronize()
    if graph:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn()
        torch.cuda.current_stream().wait_stream(stream)
        captured = torch.cuda.CUDAGraph()
        with torch.cuda.graph(captured):
            fn()
        fn = captured.replay
        fn()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(runs)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return [start.elapsed_time(end) for start, end in events]


def _time_cuda(mod: nn.Module, x: torch.Tensor, settings: LatencySettings) -> list[float]:
    return cuda_samples(lambda: mod(x), settings.warmup, settings.runs, settings.cuda_graph)


def _time_cpu(mod: nn.Module, x: torch.Tensor, settings: LatencySettings) -> list[float]:
    for _ in range(settings.warmup):
        mod(x)
    threads = settings.threads or torch.get_num_threads()
    timer = benchmark.Timer(stmt="mod(x)", globals={"mod": mod, "x": x}, num_threads=threads)
    # Exactly ``runs`` samples, each a block of calls long enough to add up to about ``min_run_time``.
    once = timer.timeit(1).median
    number = max(1, int(settings.min_run_time / settings.runs / max(once, 1e-9)))
    return [timer.timeit(number).median * 1e3 for _ in range(settings.runs)]


def measure(module: nn.Module, in_shape: tuple[int, int, int], settings: LatencySettings | None = None) -> Timing:
    """Median latency of ``module`` on a random ``(batch, *in_shape)`` input, in inference mode."""
    settings = settings or LatencySettings()
    with _LOCK, torch.inference_mode():
        if settings.device.startswith("cuda"):
            torch.backends.cudnn.benchmark = True
        mod, x = _prepare(module, in_shape, settings)
        try:
            samples = (_time_cuda if settings.device.startswith("cuda") else _time_cpu)(mod, x, settings)
        except RuntimeError as exc:
            raise ValueError(f"cannot time this layer in {settings.dtype} on {settings.device}: {exc}") from exc
    return _timing(samples, settings)


def compare(dense: nn.Module, factorised: nn.Module, in_shape: tuple[int, int, int],
            settings: LatencySettings | None = None) -> tuple[Timing, Timing]:
    """The dense layer's and its factorised replacement's timings, from one :func:`paired` measurement."""
    pair = paired(dense, factorised, in_shape, settings)
    return pair.dense, pair.factorised


# A verdict needs the speed-up's confidence interval on one side of 1; more rounds are timed (up to
# MAX_ROUNDS_FACTOR x runs) while it straddles 1 and is wider than NOISY_WIDTH (high / low).
CONFIDENCE = 0.95
NOISY_WIDTH = 1.25
MAX_ROUNDS_FACTOR = 3
VERDICTS = ("faster", "slower", "same", "noisy")


@dataclass(frozen=True)
class PairedTiming:
    """Dense and factorised timed in one interleaved measurement.

    ``speedup`` is the median over rounds of dense time / factorised time within a round (above 1: the
    factorised layer is faster), ``speedup_low``/``speedup_high`` a distribution-free ``CONFIDENCE`` interval of
    that median. ``verdict``: "faster" or "slower" when the interval lies on one side of 1, "same" when it
    straddles 1 but is narrow, "noisy" when it straddles 1 and is too wide to say anything.
    """

    dense: Timing
    factorised: Timing
    speedup: float
    speedup_low: float
    speedup_high: float
    rounds: int

    @property
    def verdict(self) -> str:
        if self.speedup_low > 1.0:
            return "faster"
        if self.speedup_high < 1.0:
            return "slower"
        return "noisy" if self.speedup_high / self.speedup_low > NOISY_WIDTH else "same"

    def summary(self) -> str:
        """One line: the verdict with its interval, or why there is none."""
        ci = f"{CONFIDENCE:.0%} interval {self.speedup_low:.2f}-{self.speedup_high:.2f}x"
        if self.verdict == "faster":
            return f"{self.speedup:.2f}x faster than dense ({ci}, {self.rounds} paired rounds)"
        if self.verdict == "slower":
            return f"{1 / self.speedup:.2f}x slower than dense ({ci}, {self.rounds} paired rounds)"
        if self.verdict == "same":
            return f"as fast as dense within the spread ({ci}, {self.rounds} paired rounds)"
        return f"too noisy to tell: the machine is busy ({ci}, {self.rounds} paired rounds)"


def median_interval(values: list[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """A distribution-free confidence interval of the median: order statistics from the binomial(n, 1/2)."""
    ordered, n = sorted(values), len(values)
    if n < 3:
        return ordered[0], ordered[-1]
    # The widest symmetric j with P(X < j) <= alpha/2 for X ~ Bin(n, 1/2): the interval (x_(j), x_(n-j+1)).
    alpha, tail, j = 1 - confidence, 0.0, 0
    while j < n // 2:
        tail_next = tail + math.comb(n, j) / 2**n
        if tail_next > alpha / 2:
            break
        tail, j = tail_next, j + 1
    j = max(j, 1)
    return ordered[j - 1], ordered[n - j]


def _block_cpu(mod: nn.Module, x: torch.Tensor, number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        mod(x)
    return (time.perf_counter() - start) * 1e3 / number


def _block_cuda(mod: nn.Module, x: torch.Tensor, number: int) -> float:
    return statistics.median(cuda_samples(lambda: mod(x), 0, number))


def _calls_per_block(block, mod, x, settings: LatencySettings) -> int:
    once = block(mod, x, 1) / 1e3
    return max(1, int(settings.min_run_time / (2 * settings.runs) / max(once, 1e-9)))


def paired(dense: nn.Module, factorised: nn.Module, in_shape: tuple[int, int, int],
           settings: LatencySettings | None = None) -> PairedTiming:
    """Time ``dense`` and ``factorised`` together: warm-up, then rounds of one block of each (their order
    alternating), until the speed-up's interval gives a verdict or ``MAX_ROUNDS_FACTOR * runs`` rounds are done."""
    settings = settings or LatencySettings()
    cuda = settings.device.startswith("cuda")
    block = _block_cuda if cuda else _block_cpu
    threads_before = torch.get_num_threads()
    with _LOCK, torch.inference_mode():
        if cuda:
            torch.backends.cudnn.benchmark = True
        elif settings.threads:
            torch.set_num_threads(settings.threads)
        try:
            mods = [_prepare(m, in_shape, settings) for m in (dense, factorised)]
            for mod, x in mods:
                for _ in range(max(settings.warmup, 1)):
                    mod(x)
            numbers = [_calls_per_block(block, mod, x, settings) for mod, x in mods]
            samples: list[list[float]] = [[], []]
            ratios: list[float] = []
            while True:
                for i in (0, 1) if len(ratios) % 2 == 0 else (1, 0):
                    samples[i].append(block(*mods[i], numbers[i]))
                ratios.append(samples[0][-1] / max(samples[1][-1], 1e-12))
                if len(ratios) >= settings.runs:
                    low, high = median_interval(ratios)
                    decided = low > 1.0 or high < 1.0 or high / low <= NOISY_WIDTH
                    if decided or len(ratios) >= MAX_ROUNDS_FACTOR * settings.runs:
                        break
        except RuntimeError as exc:
            raise ValueError(f"cannot time this layer in {settings.dtype} on {settings.device}: {exc}") from exc
        finally:
            torch.set_num_threads(threads_before)
    timings = [_timing(s, settings) for s in samples]
    low, high = median_interval(ratios)
    return PairedTiming(timings[0], timings[1], statistics.median(ratios), low, high, len(ratios))


def _timing(samples: list[float], settings: LatencySettings) -> Timing:
    median, p10, p90 = percentiles(samples)
    return Timing(
        median_ms=median, p10_ms=p10, p90_ms=p90, runs=len(samples), device=settings.device,
        device_name=device_name(settings.device), dtype=settings.dtype, batch=settings.batch,
        channels_last=settings.channels_last, cuda_graph=settings.cuda_graph,
        threads=settings.threads or torch.get_num_threads(),
        cudnn_benchmark=bool(torch.backends.cudnn.benchmark), torch_version=torch.__version__,
    )
