"""Forward hooks that only see the calling thread's forward passes.

Dashboard sessions share one cached model; a hook registered by one session must not record (or stop)
another session's concurrent forward pass through the same modules.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

PreHook = Callable[[str, tuple[torch.Tensor, ...]], None]
PostHook = Callable[[str, tuple[torch.Tensor, ...], torch.Tensor], None]


@contextmanager
def thread_hooks(
    modules: dict[str, nn.Module], pre: PreHook | None = None, post: PostHook | None = None
) -> Iterator[None]:
    """Call ``pre(name, inputs)`` before and ``post(name, inputs, output)`` after each module's forward,
    for forward passes run by this thread only, while the context is open. The hooks never change values."""
    me = threading.get_ident()

    def pre_hook(name: str) -> Callable:
        def hook(_module: nn.Module, inputs: tuple) -> None:
            if threading.get_ident() == me:
                pre(name, inputs)

        return hook

    def post_hook(name: str) -> Callable:
        def hook(_module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if threading.get_ident() == me:
                post(name, inputs, output)

        return hook

    handles = []
    for name, module in modules.items():
        if pre is not None:
            handles.append(module.register_forward_pre_hook(pre_hook(name)))
        if post is not None:
            handles.append(module.register_forward_hook(post_hook(name)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
