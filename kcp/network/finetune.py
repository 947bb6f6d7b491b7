"""Fine-tuning a compressed network: Adam on labelled training images, or distillation from the dense network's
logits where there are no labels. Evaluation uses held-out images only; runs are deterministic for a seed."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kcp.network.apply import predictions, scores, set_execution
from kcp.network.data import NetworkData

# KCP modules train on the 'full' path: the kernel rebuilt from the factors at every step (autograd takes the
# gradient back to them) and run as one conv. On the CPU the four-layer chain is memory-bound, not MAC-bound: its
# middle width R K^2 is often wider than the layer, and depthwise convs have a slow backward in oneDNN, so it
# trained about 2x slower than the dense network; 'full' trains at the dense network's speed
# (bench/bench_network.py measures every path). Inference keeps the module's own path.
TRAIN_EXECUTION = "full"


@dataclass(frozen=True)
class FinetuneConfig:
    """``steps`` of Adam (``lr``) on batches of ``batch`` training images; evaluated every ``eval_every`` steps."""

    steps: int = 300
    lr: float = 3e-3
    batch: int = 128
    seed: int = 0
    distill: bool = False
    temperature: float = 2.0
    eval_every: int = 25
    execution: str = TRAIN_EXECUTION

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch < 1 or self.eval_every < 1:
            raise ValueError(f"steps must be >= 0, batch and eval_every >= 1, got {self.steps}, {self.batch}, "
                             f"{self.eval_every}")
        if not self.lr > 0 or not self.temperature > 0:
            raise ValueError(f"lr and temperature must be > 0, got {self.lr} and {self.temperature}")


@dataclass
class FinetuneResult:
    """``curve``: one point per evaluation (step, training loss, held-out accuracy and top-1 agreement)."""

    steps: int
    seconds: float
    curve: list[dict[str, Any]] = field(default_factory=list)
    cancelled: bool = False

    @property
    def final(self) -> dict[str, Any]:
        return self.curve[-1] if self.curve else {}

    def to_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "seconds": self.seconds, "cancelled": self.cancelled, "curve": self.curve}


def finetune(
    net: nn.Module,
    data: NetworkData,
    *,
    reference_eval: torch.Tensor,
    teacher: nn.Module | None = None,
    config: FinetuneConfig | None = None,
    progress: Callable[[int, int, dict[str, Any] | None], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> FinetuneResult:
    """Train ``net`` in place. ``reference_eval`` are the dense network's logits on ``data.eval_x`` (for top-1
    agreement); ``teacher`` (the dense network) is needed with ``config.distill``. ``progress(step, steps, point)``
    is called after every step (``point`` is the curve's new point, or None); ``should_stop()`` cancels between
    steps. ``net`` is left in eval mode on its inference execution."""
    config = config or FinetuneConfig()
    if config.distill and teacher is None:
        raise ValueError("distillation needs the dense network as the teacher")
    if not config.distill and data.train_y is None:
        raise ValueError(f"{data.name} has no labels: fine-tune by distillation from the dense network (--distill), "
                         f"or give labelled images (--data DIR)")
    x, y = data.train_x, data.train_y
    if config.distill:
        y = predictions(teacher, x)
    paths = {m: m.execution for m in net.modules() if hasattr(m, "execution")}
    set_execution(net, config.execution)
    gen = torch.Generator().manual_seed(config.seed)
    params = [p for p in net.parameters() if p.requires_grad]
    optimiser = torch.optim.Adam(params, lr=config.lr)
    result = FinetuneResult(config.steps, 0.0)
    start = time.perf_counter()

    def evaluate(step: int, loss: float | None) -> dict[str, Any]:
        point = {"step": step, "loss": loss, **scores(predictions(net, data.eval_x), data.eval_y, reference_eval),
                 "seconds": round(time.perf_counter() - start, 3)}
        result.curve.append(point)
        return point

    evaluate(0, None)
    order = torch.empty(0, dtype=torch.long)
    try:
        with torch.random.fork_rng():
            torch.manual_seed(config.seed)
            net.train()
            for step in range(1, config.steps + 1):
                if should_stop is not None and should_stop():
                    result.cancelled, result.steps = True, step - 1
                    break
                if len(order) < config.batch:  # a fresh permutation per epoch, the last partial batch dropped
                    order = torch.randperm(len(x), generator=gen)
                idx, order = order[: config.batch], order[config.batch:]
                loss = _loss(net(x[idx]), y[idx], config)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                point = None
                if step % config.eval_every == 0 or step == config.steps:
                    point = evaluate(step, loss.item())
                if progress is not None:
                    progress(step, config.steps, point)
    finally:
        net.eval()
        for module, path in paths.items():
            module.execution = path
    if result.cancelled and result.curve[-1]["step"] != result.steps:
        evaluate(result.steps, None)
    result.seconds = time.perf_counter() - start
    return result


def _loss(out: torch.Tensor, target: torch.Tensor, config: FinetuneConfig) -> torch.Tensor:
    if not config.distill:
        return F.cross_entropy(out, target)
    t = config.temperature
    return F.kl_div(F.log_softmax(out / t, 1), F.log_softmax(target / t, 1), log_target=True,
                    reduction="batchmean") * t * t
