"""Train the offline default model on scikit-learn's digits: ``python -m kcp.zoo.train_digits``.

Deterministic (fixed seeds, one thread, deterministic algorithms): rerunning it with the same torch
build reproduces the weights bit for bit. Writes ``kcp/assets/digits_cnn.pt`` (a state dict, loadable with
``weights_only=True``) and ``kcp/assets/digits_cnn.json`` (held-out accuracy, settings, sha256 of the weights).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from kcp.zoo.digits import SPLIT_SEED, TEST_FRACTION, DigitsCNN, digits_split
from kcp.zoo.registry import ASSETS


def _shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Move each image by up to one pixel in each direction (zero fill): handwriting is rarely centred."""
    padded = F.pad(x[:, 0], (1, 1, 1, 1))
    dy, dx = torch.randint(0, 3, (2, x.shape[0]), generator=gen)
    rows = (dy[:, None] + torch.arange(8))[:, :, None]
    cols = (dx[:, None] + torch.arange(8))[:, None, :]
    return padded[torch.arange(x.shape[0])[:, None, None], rows, cols].unsqueeze(1)


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[int, float]:
    """Number of correct predictions and their fraction, in eval mode."""
    model.eval()
    correct = int((model(x).argmax(1) == y).sum())
    return correct, correct / len(y)


def train(epochs: int, seed: int, batch_size: int, lr: float) -> DigitsCNN:
    """Train a fresh DigitsCNN on the training split with AdamW and a cosine learning-rate schedule."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    split = digits_split()
    model = DigitsCNN()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(len(split.y_train) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(split.y_train), generator=gen)
        for idx in order.split(batch_size):
            loss = F.cross_entropy(model(_shift(split.x_train[idx], gen)), split.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def main(argv: list[str] | None = None) -> dict:
    """Train, evaluate on the held-out split, write the weights and their record; returns the record."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--out", type=Path, default=ASSETS, help="folder for digits_cnn.pt and digits_cnn.json")
    args = p.parse_args(argv)

    # Global settings, restored afterwards so that calling main() from Python leaves the process as it was.
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        start = time.perf_counter()
        model = train(args.epochs, args.seed, args.batch_size, args.lr)
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    split = digits_split()
    correct, acc = accuracy(model, split.x_test, split.y_test)

    args.out.mkdir(parents=True, exist_ok=True)
    weights = args.out / "digits_cnn.pt"
    torch.save(model.state_dict(), weights)
    record = {
        "model": "digits-cnn",
        "test_accuracy": acc,
        "test_correct": correct,
        "n_test": len(split.y_test),
        "n_train": len(split.y_train),
        "split": {"test_size": TEST_FRACTION, "random_state": SPLIT_SEED, "stratify": True},
        "seed": args.seed,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "train_seconds": round(seconds, 1),
        "threads": 1,
        "torch": torch.__version__,
        "weights_file": weights.name,
        "weights_bytes": weights.stat().st_size,
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "command": " ".join(["python -m kcp.zoo.train_digits", *(argv if argv is not None else sys.argv[1:])]),
    }
    (args.out / "digits_cnn.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"held-out accuracy {acc:.4f} ({correct}/{len(split.y_test)}), trained in {seconds:.1f} s -> {weights}")
    return record


if __name__ == "__main__":
    main()
