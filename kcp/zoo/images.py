"""Real input images for each model, preprocessed as its weights require.

Every model has two disjoint image sets: **calibration** images (what a fit to the layer's outputs learns from)
and **evaluation** images (what every reported output error, top-1 agreement and accuracy is measured on).

ImageNet and CIFAR models get photographs that ship inside scikit-image (read straight from the installed
package, never fetched), cut into a fixed list of views (crops and flips). The twelve photos are split in two
halves of six (:data:`SPLIT_PHOTOS`), so no photo, and no crop of one, is in both sets; they are unlabelled
sample photos, not CIFAR or ImageNet images. The digits model calibrates on its training split and is evaluated
on its held-out test split, with labels. Everything is deterministic.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from kcp.zoo._memo import Memo
from kcp.zoo.digits import digits_split
from kcp.zoo.errors import ZooError
from kcp.zoo.loaded import LoadedModel
from kcp.zoo.registry import ModelSpec, get_spec

PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "camera.png",
    "coins.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "retina.jpg",
    "moon.png",
    "brick.png",
)
# Disjoint halves, each with four colour photos (one a scientific image) and two greyscale ones; the cat is
# evaluated (a CIFAR class).
SPLIT_PHOTOS = {
    "calibration": ("coffee.png", "rocket.jpg", "hubble_deep_field.jpg", "retina.jpg", "camera.png", "brick.png"),
    "evaluation": ("astronaut.png", "chelsea.png", "motorcycle_left.png", "ihc.png", "coins.png", "moon.png"),
}
SPLITS = tuple(SPLIT_PHOTOS)
# (scale of the resize, crop position, horizontal flip). Views come first, photos second, so that the
# first n images spread over as many photos as possible.
VIEWS = {
    "imagenet": ((1.0, "center", False), (1.0, "center", True), (1.0, "top-left", False), (1.0, "bottom-right", True)),
    "cifar": (
        (1.0, "center", False),
        (1.0, "center", True),
        (1.5, "top-left", False),
        (1.5, "bottom-right", False),
        (1.5, "top-right", True),
        (1.5, "bottom-left", True),
        (2.0, "center", False),
        (2.0, "center", True),
        (2.5, "top-left", True),
        (2.5, "bottom-right", False),
        (3.0, "center", False),
        (3.0, "center", True),
    ),
}

_sets: Memo[tuple[torch.Tensor, torch.Tensor | None]] = Memo(size=8)


def photos_dir() -> Path:
    """scikit-image's bundled sample-data folder (found without importing skimage)."""
    found = importlib.util.find_spec("skimage")
    if found is None or found.origin is None:
        raise ZooError("real images need scikit-image's sample photos: pip install scikit-image")
    return Path(found.origin).parent / "data"


def load_photos(names: tuple[str, ...] = PHOTOS) -> list[Image.Image]:
    """The sample photographs ``names`` as RGB images, in that order."""
    folder = photos_dir()
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise ZooError(
            f"scikit-image's sample photos {', '.join(missing)} are missing from {folder}: "
            f"reinstall scikit-image (pip install --force-reinstall scikit-image)"
        )
    photos = []
    for name in names:
        with Image.open(folder / name) as im:
            photos.append(im.convert("RGB"))
    return photos


def _view(photo: Image.Image, spec: ModelSpec, scale: float, where: str, flip: bool) -> torch.Tensor:
    pp = spec.preprocess
    img = TF.resize(photo, round(pp.resize * scale), interpolation=InterpolationMode(pp.interpolation), antialias=True)
    if where == "center":
        img = TF.center_crop(img, [pp.crop, pp.crop])
    else:
        w, h = img.size
        top = 0 if where.startswith("top") else h - pp.crop
        left = 0 if where.endswith("left") else w - pp.crop
        img = TF.crop(img, top, left, pp.crop, pp.crop)
    if flip:
        img = TF.hflip(img)
    x = TF.convert_image_dtype(TF.pil_to_tensor(img), torch.float)
    return TF.normalize(x, mean=list(pp.mean), std=list(pp.std))


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown image split {split!r}: use one of {', '.join(SPLITS)}")


def _image_set(spec: ModelSpec, split: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    if spec.family == "digits":
        data = digits_split()
        return (data.x_train, data.y_train) if split == "calibration" else (data.x_test, data.y_test)
    photos = load_photos(SPLIT_PHOTOS[split])
    views = [_view(p, spec, *view) for view in VIEWS[spec.family] for p in photos]
    return torch.stack(views), None


def _spec_of(loaded: LoadedModel) -> ModelSpec:
    if loaded.arch is None or loaded.model is None:
        raise ZooError(
            f"{loaded.name} is a bare state dict: without a network there are no real activations or network "
            f"figures; load it with arch=... naming one of the zoo architectures if it is one"
        )
    return get_spec(loaded.arch)


def max_images(loaded: LoadedModel, split: str = "evaluation") -> int:
    """How many real images of ``split`` there are for ``loaded``."""
    _check_split(split)
    spec = _spec_of(loaded)
    if spec.family == "digits":
        data = digits_split()
        return len(data.y_train if split == "calibration" else data.y_test)
    return len(SPLIT_PHOTOS[split]) * len(VIEWS[spec.family])


def default_images(loaded: LoadedModel, split: str = "evaluation") -> int:
    """The number of ``split`` images used when ``n`` is None (small for ImageNet models, to keep CPU runs quick)."""
    _check_split(split)
    spec = _spec_of(loaded)
    if split == "evaluation":
        return spec.default_images
    return spec.default_calibration or max_images(loaded, split)


def describe_images(loaded: LoadedModel, split: str = "evaluation", n: int | None = None) -> str:
    """What the first ``n`` images of ``split`` are, in words (for cards, reports and the README)."""
    _check_split(split)
    spec = _spec_of(loaded)
    n = default_images(loaded, split) if n is None else n
    if spec.family == "digits":
        part = "training" if split == "calibration" else "held-out test"
        return f"{n} labelled {split} images (the scikit-learn digits {part} split)"
    photos = min(n, len(SPLIT_PHOTOS[split]))
    other = "evaluation" if split == "calibration" else "calibration"
    return (f"{n} {split} images (crops and flips of {photos} scikit-image sample photos, unlabelled, none of them "
            f"in the {other} set)")


def sample_images(loaded: LoadedModel, n: int | None = None,
                  split: str = "evaluation") -> tuple[torch.Tensor, torch.Tensor | None]:
    """The first ``n`` real images of ``split`` for ``loaded`` (N, C, H, W), preprocessed, and their labels
    (digits only). ``split`` is 'evaluation' (every reported figure) or 'calibration' (what output fits learn).

    Deterministic; the tensors are fresh copies the caller may modify.
    """
    _check_split(split)
    spec = _spec_of(loaded)
    n = default_images(loaded, split) if n is None else n
    limit = max_images(loaded, split)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= limit:
        raise ZooError(f"{loaded.name} has {limit} real {split} images: ask for between 1 and {limit}, not {n}")
    x, y = _sets.get((spec.name, split), lambda: _image_set(spec, split))
    return x[:n].clone(), None if y is None else y[:n].clone()
