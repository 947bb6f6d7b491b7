"""Measured latency of a layer: CUDA events on a GPU, ``torch.utils.benchmark`` on the CPU.

Latency is always measured, never derived from FLOPs. A process-wide lock makes sure only one
measurement runs at a time, so concurrent users (dashboard sessions, sweep threads) do not disturb
each other's figures; the dense layer is timed in the same call with the same settings.
"""

from __future__ import annotations

import copy
import logging
import statistics
import threading
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
    median, p10, p90 = percentiles(samples)
    return Timing(
        median_ms=median, p10_ms=p10, p90_ms=p90, runs=len(samples), device=settings.device,
        device_name=device_name(settings.device), dtype=settings.dtype, batch=settings.batch,
        channels_last=settings.channels_last, cuda_graph=settings.cuda_graph,
        threads=settings.threads or torch.get_num_threads(),
        cudnn_benchmark=bool(torch.backends.cudnn.benchmark), torch_version=torch.__version__,
    )


def compare(dense: nn.Module, factorised: nn.Module, in_shape: tuple[int, int, int],
            settings: LatencySettings | None = None) -> tuple[Timing, Timing]:
    """Time the dense layer and its factorised replacement back to back with the same settings."""
    return measure(dense, in_shape, settings), measure(factorised, in_shape, settings)
