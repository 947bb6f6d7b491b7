"""Real input images for each model, preprocessed as its weights require.

ImageNet and CIFAR models get photographs that ship inside scikit-image (read straight from the installed
package, never fetched), cut into a fixed list of views (crops and flips); the digits model gets its
held-out test split, with labels. Everything is deterministic.
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
    ),
}

_sets: Memo[tuple[torch.Tensor, torch.Tensor | None]] = Memo(size=8)


def photos_dir() -> Path:
    """scikit-image's bundled sample-data folder (found without importing skimage)."""
    found = importlib.util.find_spec("skimage")
    if found is None or found.origin is None:
        raise ZooError("real images need scikit-image's sample photos: pip install scikit-image")
    return Path(found.origin).parent / "data"


def load_photos() -> list[Image.Image]:
    """The sample photographs as RGB images, in :data:`PHOTOS` order."""
    folder = photos_dir()
    missing = [name for name in PHOTOS if not (folder / name).is_file()]
    if missing:
        raise ZooError(
            f"scikit-image's sample photos {', '.join(missing)} are missing from {folder}: "
            f"reinstall scikit-image (pip install --force-reinstall scikit-image)"
        )
    photos = []
    for name in PHOTOS:
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


def _image_set(spec: ModelSpec) -> tuple[torch.Tensor, torch.Tensor | None]:
    if spec.family == "digits":
        split = digits_split()
        return split.x_test, split.y_test
    photos = load_photos()
    views = [_view(p, spec, *view) for view in VIEWS[spec.family] for p in photos]
    return torch.stack(views), None


def _spec_of(loaded: LoadedModel) -> ModelSpec:
    if loaded.arch is None or loaded.model is None:
        raise ZooError(
            f"{loaded.name} is a bare state dict: without a network there are no real activations or network "
            f"figures; load it with arch=... naming one of the zoo architectures if it is one"
        )
    return get_spec(loaded.arch)


def max_images(loaded: LoadedModel) -> int:
    """How many real images there are for ``loaded``."""
    spec = _spec_of(loaded)
    if spec.family == "digits":
        return len(digits_split().y_test)
    return len(PHOTOS) * len(VIEWS[spec.family])


def default_images(loaded: LoadedModel) -> int:
    """The number of images used when ``n`` is None (small for ImageNet models, to keep CPU runs quick)."""
    return _spec_of(loaded).default_images


def sample_images(loaded: LoadedModel, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The first ``n`` real images for ``loaded`` (N, C, H, W), preprocessed, and their labels (digits only).

    Deterministic; the tensors are fresh copies the caller may modify.
    """
    spec = _spec_of(loaded)
    n = spec.default_images if n is None else n
    limit = max_images(loaded)
    if not 1 <= n <= limit:
        raise ZooError(f"{loaded.name} has {limit} real images: ask for between 1 and {limit}, not {n}")
    x, y = _sets.get(spec.name, lambda: _image_set(spec))
    return x[:n].clone(), None if y is None else y[:n].clone()
