"""Shared bits of the benchmark scripts: where results go, the machine's description, kernels to use."""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
SHARED_WEIGHTS = Path(os.environ.get("KCP_SHARED_WEIGHTS", REPO.parent / "shared" / "weights"))
sys.path.insert(0, str(REPO))


def machine() -> dict:
    from kcp.latency import device_name

    return {"cpu": device_name("cpu"), "cores": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), **day()}


def day() -> dict:
    """The day of a measurement and what the day's machine could do (see :func:`reference_gflops`)."""
    return {"date": time.strftime("%Y-%m-%d"), "reference_gflops_1thread": reference_gflops()}


def reference_gflops(size: int = 512, repeats: int = 10) -> float:
    """float64 matrix-multiply rate with one torch thread (best of ``repeats``): machines of the same description
    have run the same benchmarks about 4x apart (1.4-9x, row by row) from one day to the next here, so every result
    file records what the day's machine could do."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a = torch.randn(size, size, dtype=torch.float64)
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            a @ a
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return round(2 * size ** 3 / best / 1e9, 2)


def write(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    print(f"\nwrote {path.relative_to(REPO)}")
    return path


def resnet18_layer3_0_conv2() -> tuple[torch.Tensor, str]:
    """resnet18's layer3.0.conv2 kernel: pretrained when its file is in the hub cache, else torchvision's init."""
    from kcp import zoo

    try:
        loaded = zoo.load_model("resnet18", download=False)
        return zoo.get_conv(loaded, "layer3.0.conv2").weight.detach(), "pretrained ImageNet weights"
    except zoo.ZooError:
        from torchvision.models import resnet18

        torch.manual_seed(0)
        return (resnet18().layer3[0].conv2.weight.detach(),
                "torchvision's random init (pretrained weights are not available offline)")


def cifar_state(name: str) -> dict[str, torch.Tensor] | None:
    path = SHARED_WEIGHTS / name
    if not path.is_file():
        return None
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return {k.removeprefix("module."): v for k, v in ckpt["state_dict"].items()}


def table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(widths[c]) for c in columns))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)
