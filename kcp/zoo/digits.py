"""The offline default model: a small CNN on scikit-learn's handwritten digits (they ship with the package).

The 8x8 images are upsampled to 16x16 inside the network so that its 3x3 convs have room to work;
conv2, conv3 and conv4 are 3x3 layers with at least 32 channels on both sides, for KCP to factorise.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

SPLIT_SEED = 0
TEST_FRACTION = 0.25
INPUT_SIZE = (1, 8, 8)


class DigitsCNN(nn.Module):
    """conv 1->32, 32->32, pool, 32->64, 64->64, pool (3x3, BN, ReLU), global average pool, linear 64 -> 10."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        widths = (1, 32, 32, 64, 64)
        for i in range(4):
            setattr(self, f"conv{i + 1}", nn.Conv2d(widths[i], widths[i + 1], 3, padding=1, bias=False))
            setattr(self, f"bn{i + 1}", nn.BatchNorm2d(widths[i + 1]))
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = F.relu(self.bn3(self.conv3(x)))
        x = F.max_pool2d(F.relu(self.bn4(self.conv4(x))), 2)
        return self.fc(x.mean(dim=(2, 3)))


@dataclass(frozen=True)
class DigitsSplit:
    """Images as (N, 1, 8, 8) floats in [0, 1] and int64 labels."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


@lru_cache(maxsize=1)
def _split() -> DigitsSplit:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x_tr, x_te, y_tr, y_te = train_test_split(
        data.images, data.target, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=data.target
    )

    def images(a) -> torch.Tensor:
        # Pixel values are counts 0..16 over a 4x4 block of the original 32x32 bitmap.
        return torch.from_numpy(a).float().div_(16.0).unsqueeze(1)

    return DigitsSplit(images(x_tr), torch.from_numpy(y_tr).long(), images(x_te), torch.from_numpy(y_te).long())


def digits_split() -> DigitsSplit:
    """The fixed train/test split (stratified, 25 % test, seed 0); fresh tensors the caller may modify."""
    s = _split()
    return DigitsSplit(s.x_train.clone(), s.y_train.clone(), s.x_test.clone(), s.y_test.clone())
