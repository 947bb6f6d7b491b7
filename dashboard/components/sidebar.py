"""The sidebar: what every page works on (model, layer, KT and CP ranks, factor shape, methods, latency).

Every page calls ``render()`` first; it draws the shared controls and returns the :class:`Selection`. Streamlit
gives each page's widgets their own identity, so every control here keeps its value under a plain session-state
key (see :func:`keep`): all pages share one selection and a page switch changes nothing. Each browser
session has its own session state, so sessions never see each other's choices.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import streamlit as st
import torch

from dashboard.components import fmt, guards, resources
from dashboard.components.defaults import default_layer
from kcp import zoo
from kcp.decomposition import REFINE_SWEEPS
from kcp.estimate import estimate
from kcp.fit import DEFAULT_FIT, FITS
from kcp.kron import FactorShape, balanced_split, make_factor_shape, max_cp_rank, max_kt_rank
from kcp.latency import DTYPES, LatencySettings
from kcp.methods import BASELINES, DECOMPOSITIONS, METHODS, rank_family

UPLOAD = "__upload__"
# The baselines that need no Kronecker factor shape (the only ones where KCP does not apply).
BASELINE_ONLY = tuple(m for m in BASELINES if not METHODS[m].kronecker)
DEFAULT_RANKS = {"kt_rank": 2, "cp_rank": 4}
# Live network top-1 is on by default when one pass over the images costs at most this many MACs.
LIVE_FIDELITY_MACS = 10e9
# Live latency: enough runs for a stable median, short enough for the < 1 s update.
LIVE_RUNS, LIVE_WARMUP, LIVE_MIN_RUN_TIME = 10, 2, 0.02
LADDER = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
UPLOADED = "uploaded_path"
FIT_LABELS = {"kernel": "the kernel", "outputs": "outputs on real images"}


@dataclass(frozen=True, eq=False)
class Selection:
    """The shared choice every page works on.

    ``factors`` and ``ranks`` (the sliders' KT and CP rank) are None where KCP does not apply (``kcp_reason``
    says why); ``baseline`` is then the method and ranks of the baseline slider.
    """

    loaded: zoo.LoadedModel
    layer: zoo.ConvLayerInfo
    kcp_reason: str | None
    factors: tuple[int, int, int, int] | None
    placement: str
    refine_sweeps: int
    methods: tuple[str, ...]
    match: str
    n_images: int | None
    live_fidelity: bool
    latency: LatencySettings | None
    fit: str = DEFAULT_FIT
    n_calibration: int | None = None
    ranks: tuple[int, int] | None = None
    baseline: tuple[str, dict[str, int]] | None = None
    slot: Any = None  # the sidebar container the rank sliders go in (see with_ranks)

    @property
    def kcp_ok(self) -> bool:
        return self.kcp_reason is None

    @property
    def baselines(self) -> tuple[str, ...]:
        return tuple(m for m in self.methods if m != "kcp")

    def factor_shape(self) -> FactorShape:
        return make_factor_shape(self.layer.weight_shape, self.factors, self.placement)

    def point(self, method: str, ranks: dict[str, int], fit: str | None = None) -> resources.Point:
        """The request for ``method`` at ``ranks``, fitted as the sidebar says (or to ``fit``)."""
        return resources.Point.make(method, ranks, self.factors, self.placement, self.refine_sweeps,
                                    fit or self.fit)


def widget_key(key: str) -> str:
    """The key of the widget that shows the value kept under ``key``."""
    return f"_{key}_widget"


def _sync(key: str) -> None:
    st.session_state[key] = st.session_state[widget_key(key)]


def keep(key: str, default: Any, valid: Callable[[Any], bool] = lambda _: True) -> dict[str, Any]:
    """Keyword arguments for a widget whose value lives under ``key`` in session state.

    The widget is seeded from ``key`` on every run (``default`` when missing or no longer ``valid``) and copies
    a change back; so the value survives page switches, and code can move it by setting ``key`` in a callback.
    """
    value = st.session_state.get(key, default)
    if not valid(value):
        value = default
    st.session_state[key] = st.session_state[widget_key(key)] = value
    return {"key": widget_key(key), "on_change": _sync, "args": (key,)}


def divisor_pairs(n: int) -> list[tuple[int, int]]:
    """Every way to write ``n`` as a x b (the candidate Kronecker splits of a channel count)."""
    return [(a, n // a) for a in range(1, n + 1) if n % a == 0]


def rank_ladder(top: int, current: int) -> list[int]:
    """Ranks to offer for a grid: a roughly geometric ladder up to the largest meaningful rank, and the slider's."""
    return sorted({c for c in LADDER if c <= top} | {top, min(current, top)})


def over_dense(selection: Selection, kt_rank: int, cp_rank: int) -> str:
    """'' for a KCP point cheaper than the dense layer, else a mark saying it is larger or costlier."""
    info = selection.layer
    prediction = estimate("kcp", info.weight_shape, {"kt_rank": kt_rank, "cp_rank": cp_rank},
                          info.in_hw or info.weight_shape[2:], factor_shape=selection.factor_shape())
    return " ⚠ " + ", ".join(prediction.warnings()) if prediction.warnings() else ""


def layer_label(info: zoo.ConvLayerInfo) -> str:
    """One line per layer in the searchable list: name, kernel shape, input size, and KCP's verdict."""
    where = f" @ {info.in_hw[0]}×{info.in_hw[1]}" if info.in_hw else ""
    groups = f" g={info.groups}" if info.groups != 1 else ""
    return f"{info.name} · {fmt.shape(info.weight_shape)}{groups}{where}" + ("" if info.kcp_ok else " · ✗ no KCP")


def _model_label(name: str) -> str:
    if name == UPLOAD:
        return "Upload a checkpoint…"
    spec = zoo.MODELS[name]
    missing = "" if zoo.weights_available(name) else f" — weights not here ({spec.file_mb:.0f} MB)"
    return f"{spec.title}{missing}"


def _pick_model(sb) -> tuple[str | None, str | None]:
    options = [*zoo.MODELS, UPLOAD]
    source = sb.selectbox("Model", options, format_func=_model_label,
                          help="The zoo's models (ImageNet and CIFAR weights come from the torch hub cache, "
                               "$TORCH_HOME/hub/checkpoints) or a checkpoint of your own.",
                          **keep("model", zoo.DEFAULT_MODEL, lambda v: v in options))
    if source != UPLOAD:
        return source, None
    file = sb.file_uploader(
        "Checkpoint file", key="upload", max_upload_size=zoo.MAX_CHECKPOINT_BYTES // 2**20,
        help=f"A state dict saved with torch.save(model.state_dict(), path), at most "
             f"{fmt.nbytes(zoo.MAX_CHECKPOINT_BYTES)}. It is read with torch.load(weights_only=True): files that "
             f"need pickled code are refused. A state dict of a zoo architecture gets real activations; any other "
             f"dict of 4-D tensors is explored as bare kernels.")
    arch = sb.selectbox("Architecture", [None, *zoo.MODELS],
                        format_func=lambda a: "detect from its keys" if a is None else zoo.MODELS[a].title,
                        **keep("upload_arch", None, lambda v: v is None or v in zoo.MODELS))
    if file is not None:
        # Kept by path, so the upload is still there on the other pages (their uploader widgets start empty).
        st.session_state[UPLOADED] = str(resources.save_upload(file.name, file.getvalue()))
    path = st.session_state.get(UPLOADED)
    if path is None or not Path(path).is_file():
        st.info("Upload a checkpoint in the sidebar (a `.pt`/`.pth` state dict), or pick a zoo model.",
                icon=":material/upload_file:")
        return None, None
    if file is None:
        sb.caption(f"Using the uploaded **{Path(path).name}**; upload another file to replace it.")
    return path, arch


def _pick_factors(info: zoo.ConvLayerInfo) -> tuple[int, int, int, int]:
    out_c, in_c = info.weight_shape[:2]
    picks = []
    for col, label, n in zip(st.columns(2), ("C_out = O_A×O_B", "C_in = I_A×I_B"), (out_c, in_c)):
        pairs = divisor_pairs(n)
        picks.append(col.selectbox(label, pairs, format_func=lambda p: f"{p[0]}×{p[1]}",
                                   **keep(f"split::{label}::{n}", balanced_split(n), pairs.__contains__)))
    (o_a, o_b), (i_a, i_b) = picks
    return o_a, o_b, i_a, i_b


def _pick_latency(sb) -> LatencySettings | None:
    with sb.expander("Latency settings"):
        on = st.toggle("Measure latency", help="Time the factorised layer and the dense one with the same settings "
                       "(measured, never derived from FLOPs).", **keep("lat_on", True))
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        device = st.selectbox("Device", devices, disabled=not on, **keep("lat_device", "cpu", lambda v: v in devices))
        dtype = st.selectbox("dtype", list(DTYPES), disabled=not on, **keep("lat_dtype", "fp32"))
        batch = int(st.number_input("Batch", min_value=1, max_value=1 << 16, disabled=not on,
                                    **keep("lat_batch", 1, lambda v: 1 <= v <= 1 << 16)))
        st.caption(f"Live: median of at least {LIVE_RUNS} runs after {LIVE_WARMUP} warm-up runs "
                   f"(torch.utils.benchmark on a CPU, CUDA events on a GPU).")
    if not on:
        return None
    return LatencySettings(device=device, dtype=dtype, batch=batch, runs=LIVE_RUNS, warmup=LIVE_WARMUP,
                           min_run_time=LIVE_MIN_RUN_TIME)


def _pick_fit(sb, loaded: zoo.LoadedModel) -> tuple[str, int | None]:
    """What every method is fitted to, and on how many calibration images."""
    if loaded.model is None:
        return DEFAULT_FIT, None
    fit = sb.radio("Fit to", FITS, horizontal=True, format_func=FIT_LABELS.get,
                   help="The kernel: minimise ‖W − Ŵ‖. Outputs: minimise the layer's output error on the "
                        "calibration images (never the evaluation images every figure is measured on).",
                   **keep("fit", DEFAULT_FIT, FITS.__contains__))
    top, default = zoo.max_images(loaded, "calibration"), zoo.default_images(loaded, "calibration")
    n = int(sb.number_input("Calibration images (output fit)", 1, top, disabled=fit != "outputs",
                            help=f"The first N of the {zoo.describe_images(loaded, 'calibration', top)}.",
                            **keep(f"calibration::{loaded.name}", default, lambda v: 1 <= v <= top)))
    return fit, None if n == default else n


def _pick_images(sb, loaded: zoo.LoadedModel, infos: list[zoo.ConvLayerInfo]) -> tuple[int | None, bool]:
    if loaded.model is None:
        sb.caption("Bare kernels (no network): no real activations, so no output error, top-1 or output fit.")
        return None, False
    top, default = zoo.max_images(loaded), zoo.default_images(loaded)
    n = int(sb.number_input("Evaluation images (output error, top-1)", 1, top,
                            help=f"The first N of the {zoo.describe_images(loaded, 'evaluation', top)}.",
                            **keep(f"images::{loaded.name}", default, lambda v: 1 <= v <= top)))
    network_macs = sum(i.macs or 0 for i in infos) * n
    live = sb.toggle("Network top-1 on every move",
                     help=f"Runs the whole network on {n} images with the layer replaced (about "
                          f"{fmt.si(network_macs)} MACs). Off by default for networks too slow for a live view; "
                          f"the grid can still compute it.",
                     **keep(f"live_fid::{loaded.name}", network_macs <= LIVE_FIDELITY_MACS))
    return (None if n == default else n), live


def set_ranks(kt_rank: int, cp_rank: int) -> None:
    """Move the sliders (from a callback, e.g. a click on a heatmap cell)."""
    st.session_state["kt_rank"], st.session_state["cp_rank"] = int(kt_rank), int(cp_rank)


def _slider(label: str, key: str, top: int, help: str) -> int:
    # Clamped to this layer's range: the value moves with the layer and a heatmap click moves the slider.
    value = min(max(int(st.session_state.get(key, DEFAULT_RANKS[key])), 1), top)
    st.session_state[key] = value
    if top <= 1:
        st.caption(f"{label}: 1 (the only meaningful value)")
        return 1
    return st.slider(label, 1, top, help=help, **keep(key, value))


def _rank_sliders(shape: FactorShape, placement: str) -> tuple[int, int]:
    """The KT and CP rank sliders, up to the layer's largest meaningful ranks for this factor shape."""
    top_r, top_k = max_kt_rank(shape), max_cp_rank(shape)
    r = _slider("KT rank R", "kt_rank", top_r,
                f"Kronecker terms W ≈ Σ A_r ⊗ B_r, up to {top_r} (where the KT is exact) for {shape}.")
    k = _slider("CP rank K", "cp_rank", top_k, f"CP rank of every factor A_r and B_r, up to {top_k} (past it "
                f"both are exact).")
    st.caption(f"factor shape {shape} · {placement}")
    return r, k


def _baseline_slider(selection: Selection) -> tuple[str, dict[str, int]] | None:
    """Where KCP does not apply: the KCP sliders off with the reason, and a baseline with its rank instead
    (none for a grouped conv, which no method here replaces)."""
    st.slider("KT rank R", 1, 2, 1, disabled=True, key="_kt_disabled")
    st.slider("CP rank K", 1, 2, 1, disabled=True, key="_cp_disabled")
    st.caption(f"KCP does not apply to this layer: {selection.kcp_reason}")
    if selection.layer.groups != 1:
        return None
    methods = [m for m in BASELINE_ONLY if m in selection.methods] or list(BASELINE_ONLY)
    method = st.selectbox("Baseline instead", methods, format_func=lambda m: METHODS[m].label,
                          **keep("baseline_method", methods[0], lambda v: v in methods))
    top, ranks_of = rank_family(method, selection.layer.weight_shape, None)
    if top <= 1:
        return method, ranks_of(1)
    r = st.slider("Baseline rank", 1, top, help=f"Up to {top}, the largest rank that means something for "
                  f"{METHODS[method].label} here.", **keep(f"baseline_rank::{method}::{top}", min(4, top)))
    return method, ranks_of(r)


def with_ranks(selection: Selection) -> Selection:
    """Draw the rank sliders into their place near the top of the sidebar; the selection with their values.

    The explore page calls this inside its live fragment, so that moving a slider reruns only that fragment.
    """
    with selection.slot:
        if selection.kcp_ok:
            return replace(selection, ranks=_rank_sliders(selection.factor_shape(), selection.placement))
        return replace(selection, baseline=_baseline_slider(selection))


def render(sliders: bool = True) -> Selection | None:
    """Draw the shared controls and return the selection (None, with the reason shown, if there is none).

    ``sliders=False`` leaves the rank sliders to :func:`with_ranks` (a page that draws them in a fragment).
    """
    sb = st.sidebar
    source, arch = _pick_model(sb)
    if source is None:
        return None
    with st.spinner("Loading the model…"):
        loaded = guards.attempt("Loading the model", resources.load_model, source, arch)
    if loaded is None:
        st.info("Pick another model in the sidebar; the offline default is "
                f"**{zoo.MODELS[zoo.DEFAULT_MODEL].title}**.", icon=":material/arrow_back:")
        return None
    infos = resources.layers(loaded)
    names = [i.name for i in infos]
    layer_key = f"layer::{loaded.name}::{loaded.weights_id}"
    name = sb.selectbox("Layer", names, format_func=lambda n: layer_label(infos[names.index(n)]),
                        help="Type to search. Layers marked ✗ are ones KCP does not apply to (the page says why).",
                        **keep(layer_key, default_layer(infos), lambda v: v in names))
    info = infos[names.index(name)]
    ranks_slot = sb.container()
    fit_slot = sb.container()

    kcp_reason = None if info.kcp_ok else info.kcp_reason
    with sb.expander("Factor shape and placement"):
        factors = _pick_factors(info)
        placement = st.radio("Placement", ("split", "a-spatial"), horizontal=True,
                             help="split: A_r takes k_h and B_r takes k_w; a-spatial: A_r takes the whole "
                                  "k_h×k_w window and B_r is a matrix.", **keep("placement", "split"))
        forced = kcp_reason is not None and info.groups == 1 and st.checkbox(
            "Use this trivial split anyway", help="A factor of size 1 shares nothing on that side.",
            **keep(f"trivial::{layer_key}::{name}", False))
        if forced:
            kcp_reason = None
    refine = sb.toggle("Joint refinement", help="Block-ALS sweeps over all eight factor blocks after the "
                       "two-stage start.", **keep("refine", True))
    sweeps = int(sb.number_input("Most refinement sweeps", 1, 10 * REFINE_SWEEPS, disabled=not refine,
                                 help="The fit stops earlier once it has converged.",
                                 **keep("sweeps", REFINE_SWEEPS, lambda v: 1 <= v <= 10 * REFINE_SWEEPS)))
    methods = tuple(sb.multiselect("Methods to compare", DECOMPOSITIONS, format_func=lambda m: METHODS[m].label,
                                   **keep("methods", list(DECOMPOSITIONS), lambda v: set(v) <= set(DECOMPOSITIONS))))
    methods = methods or ("kcp",)
    match = sb.radio("Baselines at equal", ("params", "macs"), horizontal=True,
                     format_func=lambda m: {"params": "parameters", "macs": "MACs"}[m], **keep("match", "params"))
    fit, n_calibration = _pick_fit(fit_slot, loaded)
    n_images, live_fidelity = _pick_images(sb, loaded, infos)
    latency = _pick_latency(sb)
    selection = Selection(
        loaded=loaded, layer=info, kcp_reason=kcp_reason, factors=None if kcp_reason else factors,
        placement=placement, refine_sweeps=sweeps if refine else 0, methods=methods, match=match,
        n_images=n_images, live_fidelity=live_fidelity, latency=latency, fit=fit, n_calibration=n_calibration,
        slot=ranks_slot,
    )
    if sliders:
        selection = with_ranks(selection)
    return selection
