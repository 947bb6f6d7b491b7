"""Images for a whole-network plan: calibration/fine-tuning images and held-out evaluation images, never the same.

Sources: the digits model's own train/test split (offline); any folder of images in class subfolders
(``--data DIR``, read with ``torchvision.datasets.ImageFolder``); CIFAR-10 through ``torchvision.datasets.CIFAR10``
(``--data cifar10``); or, for a model with no labelled data, its unlabelled sample images: the crops and flips of
the calibration photos calibrate and train a distillation, those of the other photos evaluate (no photo in both).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from kcp import zoo
from kcp.zoo.digits import digits_split
from kcp.zoo.registry import get_spec

CIFAR10 = "cifar10"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
# Every HOLDOUT-th image of a folder without train/ and test/ subfolders is held out for evaluation.
HOLDOUT = 5
# Images of an image folder read into memory at most (the loader holds every image as one tensor).
MAX_FOLDER_IMAGES = 20_000


@dataclass(frozen=True)
class NetworkData:
    """``train_x`` calibrates the plan and fine-tunes; ``eval_x`` only evaluates. Labels are None when unknown."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor | None
    eval_x: torch.Tensor
    eval_y: torch.Tensor | None

    @property
    def labelled(self) -> bool:
        return self.train_y is not None and self.eval_y is not None

    def calibration(self, n: int) -> torch.Tensor:
        """The first ``n`` training images (the plan's calibration inputs)."""
        return self.train_x[:n]


def network_data(loaded: zoo.LoadedModel, data: str | os.PathLike | None = None) -> NetworkData:
    """The images for ``loaded``: ``data`` is None (the model's own), ``"cifar10"`` or an image folder."""
    if loaded.model is None or loaded.arch is None:
        raise ValueError(f"{loaded.name} is a bare state dict: a network plan needs the network (give --arch)")
    spec = get_spec(loaded.arch)
    if data is None:
        if spec.family == "digits":
            s = digits_split()
            return NetworkData("digits (train / test split)", s.x_train, s.y_train, s.x_test, s.y_test)
        calibration, _ = zoo.sample_images(loaded, zoo.max_images(loaded, "calibration"), split="calibration")
        evaluation, _ = zoo.sample_images(loaded, zoo.max_images(loaded))
        return NetworkData("sample images (calibration / evaluation photos)", calibration, None, evaluation, None)
    if str(data) == CIFAR10:
        return cifar10(loaded)
    return image_folder(loaded, Path(data))


def _transform(loaded: zoo.LoadedModel):
    from torchvision import transforms as T

    spec = get_spec(loaded.arch)
    channels, h, w = spec.input_size
    steps = [T.Grayscale(1)] if channels == 1 else [T.Lambda(lambda im: im.convert("RGB"))]
    steps += [T.Resize((h, w), antialias=True), T.ToTensor()]
    if spec.preprocess is not None:
        steps.append(T.Normalize(spec.preprocess.mean, spec.preprocess.std))
    return T.Compose(steps)


def _stack(dataset, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    if len(dataset) > limit:
        raise ValueError(f"{len(dataset)} images is more than the {limit} this loader holds in memory: "
                         f"give a smaller folder")
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(xs), torch.tensor(ys, dtype=torch.long)


def _check_classes(loaded: zoo.LoadedModel, classes: list[str], where: Path) -> None:
    if loaded.num_classes is not None and len(classes) > loaded.num_classes:
        raise ValueError(f"{where} has {len(classes)} class folders but {loaded.name} has {loaded.num_classes} "
                         f"outputs: give at most that many classes, named in sorted order of the model's labels")


def image_folder(loaded: zoo.LoadedModel, root: Path) -> NetworkData:
    """Images in class subfolders (sorted names are labels 0, 1, ...): ``root/train`` and ``root/test`` (or
    ``root/val``) when present, else ``root`` itself with every HOLDOUT-th image held out for evaluation."""
    from torchvision.datasets import ImageFolder

    if not root.is_dir():
        raise ValueError(f"--data {root}: no such folder; give a folder of images in class subfolders, "
                         f"or '{CIFAR10}'")
    held = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
    transform = _transform(loaded)
    try:
        if (root / "train").is_dir() and held is not None:
            train, test = ImageFolder(root / "train", transform), ImageFolder(held, transform)
            if train.classes != test.classes:
                raise ValueError(f"{root}/train and {held} have different class folders: make them the same")
            _check_classes(loaded, train.classes, root)
            (tx, ty), (ex, ey) = _stack(train, MAX_FOLDER_IMAGES), _stack(test, MAX_FOLDER_IMAGES)
        else:
            whole = ImageFolder(root, transform)
            _check_classes(loaded, whole.classes, root)
            x, y = _stack(whole, MAX_FOLDER_IMAGES)
            held_out = torch.arange(len(y)) % HOLDOUT == HOLDOUT - 1
            tx, ty, ex, ey = x[~held_out], y[~held_out], x[held_out], y[held_out]
    except FileNotFoundError as exc:  # ImageFolder: no class folders or no images in them
        raise ValueError(f"--data {root}: {exc}") from None
    if len(ex) == 0 or len(tx) == 0:
        raise ValueError(f"--data {root}: too few images to hold some out for evaluation; add more images")
    return NetworkData(f"image folder {root}", tx, ty, ex, ey)


def cifar10_root() -> Path:
    """``$KCP_CIFAR10_DIR``, else ``datasets/`` beside the torch hub cache (``$TORCH_HOME``)."""
    env = os.environ.get("KCP_CIFAR10_DIR")
    return Path(env) if env else Path(torch.hub.get_dir()).parent / "datasets"


def cifar10(loaded: zoo.LoadedModel) -> NetworkData:
    """CIFAR-10's training and test sets from :func:`cifar10_root` (read offline; never downloaded here)."""
    from torchvision.datasets import CIFAR10 as Cifar10

    spec = get_spec(loaded.arch)
    if spec.family != "cifar":
        raise ValueError(f"--data {CIFAR10} is for the CIFAR models, not {loaded.name}")
    root = cifar10_root()
    transform = _transform(loaded)
    try:
        train = Cifar10(root, train=True, transform=transform, download=False)
        test = Cifar10(root, train=False, transform=transform, download=False)
    except RuntimeError:
        raise ValueError(f"CIFAR-10 is not in {root}: fetch {CIFAR10_URL} and extract it there (it makes "
                         f"{root}/cifar-10-batches-py), or set KCP_CIFAR10_DIR to the folder that holds it") from None
    (tx, ty), (ex, ey) = _stack(train, 60_000), _stack(test, 60_000)
    return NetworkData(f"CIFAR-10 ({root})", tx, ty, ex, ey)
