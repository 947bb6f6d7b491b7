"""What the engine tests share besides fixtures: a small real layer with a logging fidelity check, one sweep
config, and the rows without their timings. (A module of its own: test files cannot import a conftest.)"""

from __future__ import annotations

from pathlib import Path

import torch
from engine_faults import LoggedFidelity
from torch import nn

from kcp.schema import TIMING_COLUMNS
from kcp.sweep import SweepConfig
from kcp.target import LayerTarget

# Every column except the timings must agree across engines.
TIMED = ("seconds", *TIMING_COLUMNS)
CONFIG = SweepConfig(kt_ranks=(1, 2), cp_ranks=(1, 2))


def untimed(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMED} for row in rows]



def make_target(log: Path, **faults) -> LayerTarget:
    """A 16x16 3x3 conv with activations, whose fidelity check logs (and maybe crashes) in the workers."""
    gen = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(16, 16, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen))
        conv.bias.copy_(torch.randn(16, generator=gen))
    inputs = torch.randn(4, 16, 8, 8, generator=gen)
    target = LayerTarget.from_conv(conv, (8, 8), name="toy", inputs=inputs)
    target.fidelity = LoggedFidelity(conv, inputs, log, **faults)
    return target
