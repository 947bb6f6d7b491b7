"""The result cache: keys that separate what must be separate, atomic entries."""

import torch

from kcp import cache
from kcp.cache import ResultCache, cache_key


def test_key_is_stable_and_separates_parts_and_releases(monkeypatch):
    parts = {"layer": "conv4", "method": "kcp", "ranks": {"kt_rank": 2, "cp_rank": 4}}
    assert cache_key(**parts) == cache_key(**dict(reversed(parts.items())))
    assert cache_key(**parts) != cache_key(**{**parts, "ranks": {"kt_rank": 2, "cp_rank": 5}})
    before = cache_key(**parts)
    monkeypatch.setattr(cache, "CACHE_VERSION", cache.CACHE_VERSION + 1)
    assert cache_key(**parts) != before  # a release that changes the fits never reads the old entries


def test_entry_round_trips_and_a_damaged_one_is_a_miss(tmp_path):
    store = ResultCache(tmp_path)
    key = cache_key(point=1)
    store.put(key, {"factor": torch.arange(6.0), "error": 0.25, "method": "kcp"})
    got = store.get(key)
    assert torch.equal(got["factor"], torch.arange(6.0)) and got["error"] == 0.25 and got["method"] == "kcp"
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [f"{key}.pt"]  # no temporary file left behind
    store._path(key).write_bytes(b"truncated")
    assert store.get(key) is None
