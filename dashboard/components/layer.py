"""The page header and the selected layer's target, shared by every page."""

from __future__ import annotations

import streamlit as st

from dashboard.components import fmt, guards, resources, sidebar
from kcp import zoo
from kcp.target import LayerTarget


def header(sel: sidebar.Selection, title: str) -> None:
    """The page title and one line about the layer."""
    info = sel.layer
    st.title(title)
    where = f"input {info.in_hw[0]}×{info.in_hw[1]} → output {info.out_hw[0]}×{info.out_hw[1]}" if info.in_hw else \
        "no network: input size assumed"
    st.caption(f"**{sel.loaded.name}** · layer **{info.name}** · kernel {fmt.shape(info.weight_shape)} "
               f"(C_out×C_in×k_h×k_w) · stride {fmt.shape(info.stride)} · {where} · "
               f"{fmt.count(info.params)} weights · {sel.loaded.source}")


def open_page(title: str) -> tuple[sidebar.Selection, resources.TargetKey, LayerTarget]:
    """Sidebar, header and the selected layer of a page; stops the page (with the reason shown) when there is none."""
    sel = sidebar.render()
    if sel is None:
        st.stop()
    header(sel, title)
    found = layer_target(sel)
    if found is None:
        st.stop()
    return sel, *found


def layer_target(sel: sidebar.Selection) -> tuple[resources.TargetKey, LayerTarget] | None:
    """The selected layer with its real activations, refused up front if they would not fit in memory."""
    info = sel.layer
    if info.groups != 1:
        st.warning(f"**No method here applies to {info.name}**: {info.kcp_reason}. Pick a dense conv layer in the "
                   f"sidebar (the ✗ marks layers KCP does not apply to).", icon=":material/block:")
        return None
    if info.in_hw is not None and sel.loaded.model is not None:
        n = sel.n_images or zoo.default_images(sel.loaded)
        try:
            guards.check_fits(f"Keeping the activations of {n} images at {info.name}",
                              guards.activation_bytes(n, info.weight_shape[1], info.in_hw),
                              "Use fewer real images in the sidebar, or pick a later (smaller) layer.")
        except guards.RequestTooLarge as exc:
            st.error(f"**Request too large**: {exc}", icon=":material/block:")
            return None
    with st.spinner(f"Capturing real activations at {info.name}…"):
        return guards.attempt("Preparing the layer", resources.target, sel.loaded, info.name, sel.n_images,
                              sel.n_calibration, sel.fit)
