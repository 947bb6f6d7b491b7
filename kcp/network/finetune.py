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

from kcp.modules import KCPConv2d
from kcp.modules.kcp_conv import MODULE_PATHS
from kcp.network.apply import predictions, scores
from kcp.network.data import NetworkData

# Which path a KCP module trains on (inference keeps the module's own). On the CPU the four-layer chain is
# memory-bound, not MAC-bound: its intermediates are R K^2 channels wide and depthwise convs have a slow backward
# in oneDNN, so a chain wider than about half the layer trained slower than the dense conv it replaces (at R=4
# K=4 on digits-cnn, about 2x), while the 'full' path (the kernel rebuilt from the factors at every step,
# autograd taking the gradient back to them, one conv) trains at the dense conv's speed. A narrow chain is
# cheaper than the dense conv on both counts and trains on 'layered' (about 1.8x faster than 'full' at R=1 K=1).
# bench/bench_network.py measures every path.
NARROW = 0.5


def training_execution(module: KCPConv2d) -> str:
    """'layered' where the chain's width R K^2 is at most NARROW x the layer's narrower side, else 'full'."""
    return "layered" if module.width <= NARROW * min(module.in_channels, module.out_channels) else "full"


@dataclass(frozen=True)
class FinetuneConfig:
    """``steps`` of Adam (``lr``) on batches of ``batch`` training images; evaluated every ``eval_every`` steps.
    ``execution``: the path every KCP module trains on (None: :func:`training_execution` picks one per module);
    ``channels_last``: train in that memory format (the dense digits network's step is about 15 % faster in it)."""

    steps: int = 300
    lr: float = 3e-3
    batch: int = 128
    seed: int = 0
    distill: bool = False
    temperature: float = 2.0
    eval_every: int = 25
    execution: str | None = None
    channels_last: bool = True

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch < 1 or self.eval_every < 1:
            raise ValueError(f"steps must be >= 0, batch and eval_every >= 1, got {self.steps}, {self.batch}, "
                             f"{self.eval_every}")
        if not self.lr > 0 or not self.temperature > 0:
            raise ValueError(f"lr and temperature must be > 0, got {self.lr} and {self.temperature}")
        if self.execution is not None and self.execution not in MODULE_PATHS:
            raise ValueError(f"execution must be None (chosen per module) or one of {', '.join(MODULE_PATHS)}, "
                             f"got {self.execution!r}")


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
    paths = {m: m.execution for m in net.modules() if isinstance(m, KCPConv2d)}
    for module in paths:
        module.execution = config.execution or training_execution(module)
    if config.channels_last:
        _memory_format(net, torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
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
            _train_mode(net, config)
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
                    _train_mode(net, config)  # evaluating restored plain train mode
                if progress is not None:
                    progress(step, config.steps, point)
    finally:
        net.eval()
        if config.channels_last:
            _memory_format(net, torch.contiguous_format)
        for module, path in paths.items():
            module.execution = path
    if result.cancelled and result.curve[-1]["step"] != result.steps:
        evaluate(result.steps, None)
    result.seconds = time.perf_counter() - start
    return result


def _train_mode(net: nn.Module, config: FinetuneConfig) -> None:
    net.train()
    if not config.distill:
        return
    # Distillation runs on few unlabelled images (the sample photos): batch-norm layers keep the dense network's
    # running statistics, which the teacher's logits assume, instead of drifting to those few images' statistics
    # (their affine weights still train).
    for module in net.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            module.eval()


def _memory_format(net: nn.Module, memory_format: torch.memory_format) -> None:
    # Module.to(memory_format=...) refuses the factorised modules' 3-d factors: only 4-d weights change format.
    for p in net.parameters():
        if p.dim() == 4:
            p.data = p.data.contiguous(memory_format=memory_format)


def _loss(out: torch.Tensor, target: torch.Tensor, config: FinetuneConfig) -> torch.Tensor:
    if not config.distill:
        return F.cross_entropy(out, target)
    t = config.temperature
    return F.kl_div(F.log_softmax(out / t, 1), F.log_softmax(target / t, 1), log_target=True,
                    reduction="batchmean") * t * t
