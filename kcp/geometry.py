"""Convolution geometry: stride, padding, dilation and the output size they give."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def _pair(value: int | tuple[int, ...], name: str) -> tuple[int, int]:
    if isinstance(value, int):
        pair = (value, value)
    else:
        pair = tuple(int(v) for v in value)
        if len(pair) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return pair  # type: ignore[return-value]


@dataclass(frozen=True)
class ConvGeometry:
    """How a conv slides over its input; ``padding`` is a pair of ints or 'same' / 'valid'."""

    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] | str = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    padding_mode: str = "zeros"

    @classmethod
    def make(
        cls,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        padding_mode: str = "zeros",
    ) -> ConvGeometry:
        """Normalise ``nn.Conv2d``-style arguments, refusing what a conv would refuse."""
        stride, dilation = _pair(stride, "stride"), _pair(dilation, "dilation")
        if min(stride) < 1 or min(dilation) < 1:
            raise ValueError(f"stride and dilation must be >= 1, got stride={stride}, dilation={dilation}")
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
            if padding == "same" and stride != (1, 1):
                raise ValueError("padding='same' needs stride 1 (as in nn.Conv2d)")
            if padding == "valid":
                padding = (0, 0)
        else:
            padding = _pair(padding, "padding")
            if min(padding) < 0:
                raise ValueError(f"padding must be >= 0, got {padding}")
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {', '.join(PADDING_MODES)}, got {padding_mode!r}")
        return cls(stride, padding, dilation, padding_mode)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> ConvGeometry:
        return cls.make(conv.stride, conv.padding, conv.dilation, conv.padding_mode)

    def pads(self, kernel_hw: tuple[int, int]) -> tuple[int, int, int, int]:
        """Explicit ``(top, bottom, left, right)`` padding; 'same' puts any odd extra at the end, as torch does."""
        if self.padding == "same":
            out = []
            for k, d in zip(kernel_hw, self.dilation):
                total = d * (k - 1)
                out += [total // 2, total - total // 2]
            return out[0], out[1], out[2], out[3]
        ph, pw = self.padding  # type: ignore[misc]
        return ph, ph, pw, pw

    def out_hw(self, in_hw: tuple[int, int], kernel_hw: tuple[int, int]) -> tuple[int, int]:
        """Output size of the conv, refusing an input smaller than the dilated kernel."""
        top, bottom, left, right = self.pads(kernel_hw)
        out = []
        for n, pad, k, d, s in zip(in_hw, (top + bottom, left + right), kernel_hw, self.dilation, self.stride):
            span = d * (k - 1) + 1
            if n + pad < span:
                raise ValueError(f"input size {tuple(in_hw)} is smaller than the dilated kernel {tuple(kernel_hw)}")
            out.append((n + pad - span) // s + 1)
        return out[0], out[1]
