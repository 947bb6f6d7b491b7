"""A copy of a network with one submodule replaced, leaving the shared original untouched."""

from __future__ import annotations

import copy

from torch import nn

from kcp.zoo.errors import ZooError


def _shallow(module: nn.Module) -> nn.Module:
    """A new module object sharing the tensors; its own dicts (children, parameters, hooks), so that
    changing the copy's structure never reaches the original."""
    clone = copy.copy(module)
    for key, value in list(vars(clone).items()):
        if isinstance(value, (dict, set)):
            clone.__dict__[key] = copy.copy(value)
    return clone


def with_layer(model: nn.Module, name: str, module: nn.Module) -> nn.Module:
    """A copy of ``model`` whose submodule ``name`` (e.g. ``"layer3.0.conv2"``) is ``module``.

    Only the modules on the path from the root to ``name`` are copied (shallowly); every other module and
    every weight is shared with ``model``, which is not modified. So the copy is cheap and safe while other
    threads use ``model``, but must not be changed in place beyond that path (no ``.train()``, ``.to()``).
    """
    parts = name.split(".")
    root = _shallow(model)
    parent = root
    for depth, part in enumerate(parts):
        child = parent._modules.get(part)
        if child is None:
            where = ".".join(parts[:depth]) or "the model"
            raise ZooError(f"{name!r} is not a submodule: {where} has no child {part!r}")
        if depth == len(parts) - 1:
            parent._modules[part] = module
        else:
            child = _shallow(child)
            parent._modules[part] = child
            parent = child
    return root
