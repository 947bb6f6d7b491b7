"""Pretrained weights through the torch hub cache: find the cached file, or download it, or say what to do.

Files live in ``<torch.hub.get_dir()>/checkpoints/`` (``$TORCH_HOME/hub/checkpoints``), the folder torchvision
uses, so one download serves both. Before downloading, the host is probed with a short timeout: a machine
without a route gets a :class:`WeightsUnavailable` with the file, its size, its URL and the folder to put it in
within seconds instead of a hang inside ``urlopen``.
"""

from __future__ import annotations

import hashlib
import http.client
import threading
import urllib.error
import urllib.request
from pathlib import Path

import torch

from kcp.zoo.errors import WeightsUnavailable, ZooError

PROBE_TIMEOUT_S = 4.0
_sha_memo: dict[tuple[str, int, int], str] = {}
_sha_lock = threading.Lock()


def checkpoints_dir() -> Path:
    """The hub's checkpoint folder (honours ``TORCH_HOME`` and ``torch.hub.set_dir``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _open(url: str, timeout: float) -> None:
    with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
        pass


def probe(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when ``url`` answers within ``timeout`` seconds, else the reason it did not.

    Runs in a daemon thread because ``urlopen``'s timeout does not cover name resolution, which can stall.
    """
    outcome: list[str | None] = []

    def attempt() -> None:
        try:
            _open(url, timeout)
            outcome.append(None)
        except urllib.error.HTTPError:
            outcome.append(None)  # the server answered, if only to refuse a HEAD: the host is reachable
        except (OSError, ValueError, http.client.HTTPException) as exc:
            outcome.append(f"{type(exc).__name__}: {exc}")

    worker = threading.Thread(target=attempt, daemon=True, name="kcp-weights-probe")
    worker.start()
    worker.join(timeout)
    return outcome[0] if outcome else f"no answer within {timeout:g} s"


def unavailable_message(what: str, url: str, file_name: str, file_mb: float, reason: str) -> str:
    """The instructions a user needs to fetch a weights file by hand."""
    folder = checkpoints_dir()
    return (
        f"the pretrained weights for {what} are not cached and cannot be downloaded ({reason}).\n"
        f"Download {file_name} ({file_mb:.1f} MB) from {url}\n"
        f"and put it in the folder {folder} "
        f"(that is $TORCH_HOME/hub/checkpoints; set TORCH_HOME to use another folder), then try again."
    )


def load_hub_state_dict(
    what: str, url: str, file_name: str, file_mb: float, *, download: bool = True
) -> tuple[dict, Path]:
    """The state dict in the hub cache under ``file_name``, downloading it (hash-checked) when allowed.

    Returns the loaded object and the file's path. A cached file is trusted as it is (its hash is only
    checked on download, as torch.hub does), so users can drop in files of their own.
    """
    path = checkpoints_dir() / file_name
    if not path.is_file():
        if not download:
            raise WeightsUnavailable(unavailable_message(what, url, file_name, file_mb, "downloading is switched off"))
        reason = probe(url)
        if reason is not None:
            raise WeightsUnavailable(unavailable_message(what, url, file_name, file_mb, f"host unreachable: {reason}"))
    try:
        state = torch.hub.load_state_dict_from_url(
            url, map_location="cpu", progress=False, check_hash=True, file_name=file_name, weights_only=True
        )
    except (OSError, RuntimeError) as exc:
        if not path.is_file():
            raise WeightsUnavailable(unavailable_message(what, url, file_name, file_mb, str(exc))) from exc
        raise ZooError(
            f"the weights file {path} for {what} could not be read ({type(exc).__name__}: {exc}); "
            f"delete it so that it is downloaded again, or replace it with {url}"
        ) from exc
    except Exception as exc:  # weights_only refusals are UnpicklingError; anything else is equally unusable
        raise ZooError(
            f"the weights file {path} for {what} is not a plain state dict ({type(exc).__name__}: {exc}); "
            f"delete it and fetch {url} again"
        ) from exc
    return state, path


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, remembered per (path, size, mtime) so repeated loads do not rehash."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    with _sha_lock:
        if key in _sha_memo:
            return _sha_memo[key]
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    digest = h.hexdigest()
    with _sha_lock:
        _sha_memo[key] = digest
    return digest
