"""What the app opens on: the default model's default layer. Free of Streamlit, so that the workers' fork server
can import it (:mod:`dashboard.components.prewarm`)."""

from __future__ import annotations

from kcp import jobs, zoo

# Layers up to this many weights are picked by default: they decompose live in well under a second.
LIVE_WEIGHTS = 256 * 256 * 3 * 3


def default_layer(infos: list[zoo.ConvLayerInfo]) -> str:
    """The largest layer KCP applies to that still decomposes live (else the largest applicable, else the first)."""
    usable = [i for i in infos if i.kcp_ok]
    live = [i for i in usable if i.params <= LIVE_WEIGHTS]
    pool = live or usable
    return max(pool, key=lambda i: i.params).name if pool else infos[0].name


def default_spec() -> jobs.TargetSpec:
    """The layer a first visit opens, as the pages ask the workers for it (``resources.spec``: the model's default
    numbers of images)."""
    loaded = zoo.load_model(zoo.DEFAULT_MODEL)
    return jobs.TargetSpec(zoo.DEFAULT_MODEL, None, default_layer(zoo.conv_layers(loaded)))
