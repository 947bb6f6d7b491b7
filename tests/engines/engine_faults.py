"""A fidelity check for sweep targets that logs every call to a file and can kill the worker process it runs in.

It travels to the workers with the target (pickled), so it is how the engine tests count the points that
were evaluated and inject worker deaths: a log line per call, ``os._exit`` where asked.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from kcp.zoo.fidelity import Fidelity


class LoggedFidelity:
    """Channel-argmax agreement of the replaced layer with the original one on ``inputs``, logged per call.

    ``crash_once``: the first call anywhere (a marker file next to the log says it happened) kills its
    process. ``crash_on``: calls on a module of that class name always kill their process.
    """

    def __init__(self, conv: nn.Conv2d, inputs: torch.Tensor, log: Path, crash_once: bool = False,
                 crash_on: str | None = None) -> None:
        self.conv, self.inputs, self.log = conv, inputs, Path(log)
        self.crash_once, self.crash_on = crash_once, crash_on

    def __call__(self, module: nn.Module, batch: int | None = None) -> Fidelity:
        with self.log.open("a") as f:
            f.write(f"{type(module).__name__} {os.getpid()}\n")
        marker = self.log.with_suffix(".crashed")
        if (self.crash_once and not marker.exists()) or type(module).__name__ == self.crash_on:
            marker.touch()
            os._exit(3)
        with torch.no_grad():
            ref, out = self.conv(self.inputs).argmax(1), module(self.inputs).argmax(1)
        agree = (ref == out).float().mean().item()
        return Fidelity(top1_agreement=agree, accuracy=None, baseline_accuracy=None, n_images=len(self.inputs),
                        logit_rel_error=0.0, n_changed=int((ref != out).sum()))


def calls(log: Path) -> list[str]:
    """The module class of every logged call."""
    return [line.split()[0] for line in Path(log).read_text().splitlines()] if Path(log).exists() else []
