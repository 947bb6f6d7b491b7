"""Measured latency: real timings with their settings recorded, one measurement at a time, clear refusals."""

import threading
import time

import pytest
import torch
from torch import nn

from kcp import latency
from kcp.latency import LatencySettings, compare, measure


def test_measure_records_what_shaped_the_figure():
    conv = nn.Conv2d(16, 16, 3, padding=1)
    t = measure(conv, (16, 12, 12), LatencySettings(batch=2, runs=8, warmup=1, min_run_time=0.02))
    assert t.median_ms > 0 and t.p10_ms <= t.median_ms <= t.p90_ms and t.runs >= 8
    assert (t.device, t.dtype, t.batch, t.channels_last) == ("cpu", "fp32", 2, False)
    assert t.threads == torch.get_num_threads() and t.device_name.startswith("CPU")


def test_bigger_work_takes_longer():
    small, big = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(128, 128, 3, padding=1)
    quick = LatencySettings(runs=10, warmup=2, min_run_time=0.05, threads=1)  # one thread: robust on a busy machine
    t_small, t_big = measure(small, (8, 32, 32), quick), measure(big, (128, 32, 32), quick)
    assert t_big.median_ms > 3 * t_small.median_ms  # 256x the MACs


def test_compare_times_both_with_the_same_settings():
    dense, other = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 1)
    a, b = compare(dense, other, (8, 16, 16), LatencySettings(batch=3, runs=4, warmup=1, min_run_time=0.01))
    assert (a.batch, a.dtype, a.device) == (b.batch, b.dtype, b.device) == (3, "fp32", "cpu")


def test_channels_last_and_bf16_run():
    conv = nn.Conv2d(8, 8, 3, padding=1)
    t = measure(conv, (8, 8, 8), LatencySettings(dtype="bf16", channels_last=True, runs=3, warmup=1,
                                                min_run_time=0.01))
    assert t.dtype == "bf16" and t.channels_last


def test_one_measurement_at_a_time(monkeypatch):
    active, overlaps = [0], []
    original = latency._time_cpu

    def watched(*args):
        active[0] += 1
        overlaps.append(active[0])
        time.sleep(0.05)
        try:
            return original(*args)
        finally:
            active[0] -= 1

    monkeypatch.setattr(latency, "_time_cpu", watched)
    conv = nn.Conv2d(4, 4, 3)
    settings = LatencySettings(runs=2, warmup=0, min_run_time=0.01)
    threads = [threading.Thread(target=measure, args=(conv, (4, 8, 8), settings)) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert max(overlaps) == 1 and len(overlaps) == 4


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"dtype": "fp8"}, "dtype must be one of fp32, bf16, fp16"),
    ({"device": "tpu"}, "device must be 'cpu' or 'cuda'"),
    ({"batch": 0}, "batch and runs must be >= 1"),
    ({"cuda_graph": True}, "CUDA-graph replay needs device 'cuda'"),
])
def test_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LatencySettings(**kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_cuda_without_a_gpu_is_refused():
    with pytest.raises(ValueError, match="no CUDA GPU is available here"):
        LatencySettings(device="cuda")


class _Slowed(nn.Module):
    """A conv that also sleeps: a known, large gap between two layers that compute the same thing."""

    def __init__(self, conv: nn.Module, seconds: float) -> None:
        super().__init__()
        self.conv, self.seconds = conv, seconds

    def forward(self, x):
        time.sleep(self.seconds)
        return self.conv(x)


def test_paired_returns_both_figures_from_one_measurement_and_a_verdict():
    conv = nn.Conv2d(4, 4, 3, padding=1)
    settings = LatencySettings(runs=6, warmup=1, min_run_time=0.01, threads=1)
    pair = latency.paired(conv, _Slowed(conv, 0.002), (4, 8, 8), settings)
    # Both timings come from the same rounds: one block of each per round.
    assert pair.dense.runs == pair.factorised.runs == pair.rounds >= 6
    assert pair.factorised.median_ms > 2.0 > pair.dense.median_ms
    assert pair.speedup_low <= pair.speedup <= pair.speedup_high < 1.0
    assert pair.verdict == "slower" and pair.summary().endswith("paired rounds)")
    swapped = latency.paired(_Slowed(conv, 0.002), conv, (4, 8, 8), settings)
    assert swapped.verdict == "faster" and swapped.speedup_low > 1.0


def test_paired_rounds_are_interleaved(monkeypatch):
    calls = []
    original = latency._block_cpu

    def spy(mod, x, number):
        calls.append(id(mod))
        return original(mod, x, number)

    monkeypatch.setattr(latency, "_block_cpu", spy)
    a, b = nn.Conv2d(2, 2, 1), nn.Conv2d(2, 2, 3, padding=1)
    latency.paired(a, b, (2, 4, 4), LatencySettings(runs=4, warmup=0, min_run_time=0.001))
    rounds = calls[2:]  # after one probe call of each to size the blocks
    pairs = [tuple(rounds[i:i + 2]) for i in range(0, len(rounds), 2)]
    assert len(set(rounds)) == 2 and all(len(set(p)) == 2 for p in pairs)
    assert pairs[0] == pairs[1][::-1]  # the order alternates, so drift hits both alike


def test_median_interval_against_the_binomial_and_the_noisy_verdict():
    values = [float(v) for v in range(1, 11)]
    assert latency.median_interval(values) == (2.0, 9.0)  # n=10: P(X<=1) = 11/1024 <= 2.5 %, P(X<=2) > 2.5 %
    wide = latency.PairedTiming(None, None, 1.0, 0.5, 2.0, 10)
    narrow = latency.PairedTiming(None, None, 1.0, 0.97, 1.04, 10)
    assert (wide.verdict, narrow.verdict) == ("noisy", "same") and "too noisy" in wide.summary()
