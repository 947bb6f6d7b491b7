"""Learn: the maths of KCP on the selected layer — KT spectrum, the four-layer structure, filters, refinement.

Formulas are shown, never computed here: every number on this page comes from kcp.
"""

from __future__ import annotations

import streamlit as st

from dashboard.components import diagram, figures, fmt, guards, resources, sidebar
from dashboard.components.layer import open_page
from kcp.budget import largest_within
from kcp.costs import stages as cost_stages
from kcp.decomposition import Decomposition
from kcp.fit import FITS
from kcp.methods import DECOMPOSITIONS, METHODS
from kcp.target import LayerTarget


def kt_section(sel: sidebar.Selection, key: resources.TargetKey, target: LayerTarget, r: int) -> None:
    """The KT sum, its rearrangement and SVD, and this layer's KT spectrum with R marked."""
    shape = sel.factor_shape()
    st.header("1 · A sum of Kronecker products")
    st.markdown(
        f"KCP writes the kernel $W$ ({fmt.shape(target.kernel_shape)}) as a sum of $R$ Kronecker products of two "
        f"smaller kernels, $A_r$ of shape {fmt.shape(shape.a_shape)} and $B_r$ of shape {fmt.shape(shape.b_shape)} "
        f"(factor shape **{shape}**, placement **{sel.placement}**):")
    st.latex(r"W \;\approx\; \sum_{r=1}^{R} A_r \otimes B_r, \qquad "
             r"(A\otimes B)[i_1..i_4] = A[j_1..j_4]\, B[l_1..l_4],\;\; i_m = j_m\, b_m + l_m")
    st.markdown(
        "The A index is the slow one, so an input channel $c$ splits as $c = c_A I_B + c_B$. Rearranging $W$ into a "
        "matrix $\\mathcal{R}(W)$ whose rows run over the entries of $A$ and columns over those of $B$ turns each "
        "Kronecker product into a rank-one matrix (Van Loan–Pitsianis), so the best $R$ terms come from a "
        "truncated SVD, and the KT-only error has a closed form:")
    st.latex(r"\mathcal{R}(W) = \sum_j \sigma_j\, u_j v_j^\top,\quad A_r = \mathrm{fold}(\sqrt{\sigma_r}\,u_r),\;"
             r"B_r = \mathrm{fold}(\sqrt{\sigma_r}\,v_r),\qquad "
             r"\frac{\lVert W - \hat W_R\rVert_F}{\lVert W\rVert_F} = "
             r"\sqrt{\frac{\sum_{j>R}\sigma_j^2}{\sum_j \sigma_j^2}}")
    spectrum = guards.attempt("KT spectrum", resources.spectrum, key, sel.factors, sel.placement, target)
    if spectrum is None:
        return
    st.plotly_chart(figures.spectrum(spectrum.singular_values.tolist(), spectrum.energy.tolist(),
                                     spectrum.rel_errors.tolist(), r),
                    key="spectrum", config=figures.plot_config("kt-spectrum"))
    n = len(spectrum.singular_values)
    st.caption(f"This layer's KT spectrum: {n} singular values (the KT is exact at R = {n}). At R = {r} the first "
               f"terms hold {fmt.percent(float(spectrum.energy[r - 1]))} of ‖W‖² and the KT-only error is "
               f"{fmt.error(float(spectrum.rel_errors[r]))}. A slowly decaying spectrum means no small R fits well.")


def cp_section(sel: sidebar.Selection, result: Decomposition, r: int, k: int) -> None:
    """The CP of each factor, the parameter count, and the joint refinement's error per sweep."""
    fs = sel.factor_shape()
    st.header("2 · Each factor is a CP tensor")
    st.markdown(f"KCP then writes every $A_r$ and $B_r$ as a rank-$K$ CP tensor (a sum of $K$ outer products of "
                f"one vector per mode); here $K = {k}$.")
    st.latex(r"A_r \approx \sum_{c=1}^{K} a^{O}_{rc}\circ a^{I}_{rc}\circ a^{H}_{rc}\circ a^{W}_{rc},\qquad "
             r"B_r \approx \sum_{d=1}^{K} b^{O}_{rd}\circ b^{I}_{rd}\circ b^{H}_{rd}\circ b^{W}_{rd}")
    st.markdown("Together the kernel is one CP tensor of rank $R K^2$ whose factor columns are Kronecker products, "
                "and it costs only the vectors:")
    st.latex(r"\hat W = \sum_{r=1}^{R}\sum_{c,d=1}^{K} (a^O_{rc}\otimes b^O_{rd})\circ(a^I_{rc}\otimes b^I_{rd})"
             r"\circ(a^H_{rc}\otimes b^H_{rd})\circ(a^W_{rc}\otimes b^W_{rd})")
    sizes = [s for s in (fs.out_a, fs.out_b, fs.in_a, fs.in_b) if s > 1] + \
        [s for s in (fs.ka_h, fs.kb_h, fs.ka_w, fs.kb_w) if s > 1]
    total = f"{result.params():,}".replace(",", "{,}")
    st.latex(r"P = R\,K\,(O_A + O_B + I_A + I_B + k^A_h + k^B_h + k^A_w + k^B_w)"
             rf"\;=\; {r}\cdot{k}\cdot({' + '.join(map(str, sizes))}) \;=\; {total}")
    st.caption("Modes of size 1 carry no parameters (their vector is absorbed into another), so they drop out of "
               f"the sum. The dense kernel has {fmt.count(result.dense_params())} weights: compression "
               f"{fmt.ratio(result.compression())}.")
    st.markdown("The two-stage result (KT by SVD, then CP of each factor) is not optimal for the whole model, so "
                "a joint block-ALS refinement over the eight factor blocks follows; each update is an exact "
                "least-squares solve, so the error never rises:")
    if len(result.history) > 1:
        st.plotly_chart(figures.history(result.history), key="history", config=figures.plot_config("refinement"))
    else:
        st.caption(result.info.get("refine_skipped", "Refinement is off (sidebar): the two-stage result is kept."))


def structure_section(sel: sidebar.Selection, target: LayerTarget, result: Decomposition) -> None:
    """The four layers drawn with their shapes, parameters and MACs (or a baseline's layers at the same budget)."""
    st.header("3 · The four-layer structure")
    st.markdown(
        "The $R K^2$ terms sit side by side on one channel axis and run as four cheap layers: **L1** contracts the "
        "input channels layer by layer (first $I_B$ with $b^I$, then $I_A$ with $a^I$), **L2** and **L3** are "
        "depthwise $k_h\\times 1$ and $1\\times k_w$ convolutions, **L4** contracts back to $C_\\text{out}$ and "
        "sums the $R$ terms. Multiply-accumulates per image (larger sub-mode contracted first):")
    st.latex(r"\mathrm{MACs} = R K\big[H W_\text{in}(I + K\min(I_A,I_B)) + K k_h H' W_\text{in} + K k_w H'W'"
             r" + H'W'(O + K\min(O_A,O_B))\big]")
    bias = target.conv.bias is not None
    options = [m for m in DECOMPOSITIONS if m == "kcp" or m in sel.baselines]
    method = st.radio("Draw", options, format_func=lambda m: METHODS[m].structure, horizontal=True, key="structure_of",
                      help="The baselines are drawn at their largest ranks within KCP's budget (sidebar).")
    if method == "kcp":
        stages, ranks = result.stages(target.in_hw, target.geometry, bias), result.ranks
    else:
        budget = result.params() if sel.match == "params" else result.macs(target.in_hw, target.geometry)
        ranks = largest_within(method, target.kernel_shape, budget, kind=sel.match, factor_shape=result.factor_shape,
                               in_hw=target.in_hw, geometry=target.geometry)
        if ranks is None:
            st.info(f"{METHODS[method].structure}: even rank 1 is over KCP's budget here.")
            return
        stages = cost_stages(method, target.kernel_shape, ranks, target.in_hw, target.geometry,
                             result.factor_shape, bias)
    st.plotly_chart(diagram.structure(stages, f"{METHODS[method].structure} at {fmt.ranks(ranks)}",
                                      figures.METHOD_COLORS[method]),
                    key=f"structure::{method}", config=figures.plot_config(f"structure-{method}"))
    st.dataframe([{"layer": s.name, "operation": s.op, "input (C×H×W)": fmt.shape(s.in_shape),
                   "output (C×H×W)": fmt.shape(s.out_shape), "parameters": s.params, "MACs": s.macs}
                  for s in stages], hide_index=True,
                 column_config={"parameters": st.column_config.NumberColumn(format="localized"),
                                "MACs": st.column_config.NumberColumn(format="localized")})


def filters_section(target: LayerTarget, result: Decomposition) -> None:
    """Original and reconstructed filters side by side."""
    st.header("4 · Filters before and after")
    original = target.conv.weight.detach().cpu().numpy()
    approx = result.reconstruct().detach().cpu().numpy()
    st.plotly_chart(figures.filters(original, approx, f"reconstructed ({fmt.ranks(result.ranks)})"),
                    key="filters", config=figures.plot_config("filters"))
    st.caption(f"Kernel error ‖W − Ŵ‖/‖W‖ = {fmt.error(result.rel_error)} over the whole kernel.")


def fit_section(sel: sidebar.Selection, key: resources.TargetKey, target: LayerTarget, r: int, k: int) -> None:
    """Why kernel error is not the point: this layer's point fitted to the kernel and to the outputs."""
    st.header("5 · Why kernel error is not the point")
    st.markdown(
        "What a network loses is the layer's **output** on the inputs it really gets, not the kernel. A conv is a "
        "matrix product on input patches $p$, so over calibration inputs the output error is exact through the "
        "patches' second moment $G = \\sum_p p\\,p^\\top$; a fit to the outputs minimises it instead of "
        "$\\lVert W - \\hat W\\rVert$, and spends its few parameters on the directions the inputs actually use:")
    st.latex(r"\sum_{p}\lVert (W - \hat W)\,p\rVert^2 \;=\; \mathrm{tr}\big((W-\hat W)\,G\,(W-\hat W)^\top\big)")
    if target.calibration is None:
        st.info("This layer has no network around it (bare kernels), so there are no real inputs to fit to.")
        return
    fits = {}
    for fit in FITS:
        point = sel.point("kcp", {"kt_rank": r, "cp_rank": k}, fit)
        result = guards.attempt(f"Fitting to {sidebar.FIT_LABELS[fit]}", resources.decomposition, key, point, target)
        row = None if result is None else guards.attempt("Metrics", resources.metrics, key, point, False, target)
        if row is None:
            return
        fits[fit] = (result, row)
    st.dataframe([{"fitted to": sidebar.FIT_LABELS[fit], "kernel error": row["rel_error"],
                   "output error": row["output_rel_error"]} for fit, (_, row) in fits.items()],
                 hide_index=True, key="fit_errors", column_config={
                     "kernel error": st.column_config.NumberColumn(format="%.4f"),
                     "output error": st.column_config.NumberColumn(format="%.4f")})
    original = target.conv.weight.detach().cpu().numpy()
    for fit, (result, _row) in fits.items():
        st.plotly_chart(figures.filters(original, result.reconstruct().detach().cpu().numpy(),
                                        f"fitted to {sidebar.FIT_LABELS[fit]}"),
                        key=f"filters::{fit}", config=figures.plot_config(f"filters-{fit}"))
    st.caption(f"KCP at R = {r}, K = {k}, the same parameters both ways. Output error on {target.images}; the "
               f"output fit learned from {target.calibration_images}. The output fit's filters can look further "
               f"from the originals (higher kernel error) and still give the layer's outputs more faithfully.")


def honesty() -> None:
    """What real kernels look like (DESIGN §5): KCP need not beat CP at equal parameters."""
    st.header("6 · What to expect")
    st.markdown(
        "Pretrained kernels are far from low rank at high compression. On CIFAR ResNet-56 `layer3.5.conv1` "
        "(64×64×3×3, factor shape 8|8, `split`), KCP at R = 4, K = 8 (30× smaller) has kernel error 0.95 where "
        "plain CP at the same parameters has 0.93: **KCP does not necessarily beat CP at equal parameters**. "
        "At equal parameters KCP spends more MACs (its middle width is $R K^2$) and buys a higher effective rank. "
        "Output error on real activations, and accuracy after fine-tuning, can rank the methods differently from "
        "kernel error. Use the **Rank grid** page to see the trade-offs on your layer as they are.")


def main() -> None:
    """The learn page: the maths on this layer, section by section."""
    sel, key, target = open_page("Learn: what KCP does to this layer")
    ranks = sel.ranks
    if ranks is None:
        st.info(f"KCP does not apply to {sel.layer.name} ({sel.kcp_reason}), so there is no KT spectrum or KCP "
                f"structure to show. Pick another layer in the sidebar.")
        honesty()
        st.stop()
    r, k = ranks
    with st.spinner("Decomposing…"):
        result = guards.attempt("Decomposition", resources.decomposition, key,
                                sel.point("kcp", {"kt_rank": r, "cp_rank": k}), target)
    if result is None:
        st.stop()
    kt_section(sel, key, target, r)
    cp_section(sel, result, r, k)
    structure_section(sel, target, result)
    filters_section(target, result)
    fit_section(sel, key, target, r, k)
    honesty()


main()
