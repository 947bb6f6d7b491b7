"""KCP Rank Explorer: ``streamlit run dashboard/app.py`` (from the repository root).

Navigation only; every page draws the shared sidebar itself (``dashboard.components.sidebar``). The pages live in
``views/``, not ``pages/``: Streamlit treats a ``pages/`` folder beside the entry point as a legacy multipage app,
and a first visit straight to a page URL would then run that page without this script (no navigation, no layout).
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `streamlit run` puts dashboard/ on the path, not the repository root
    sys.path.insert(0, str(ROOT))

from dashboard.components import prestart  # noqa: E402


def main() -> None:
    """Start the workers' fork server and pool (its imports run beside the server's own), then the page."""
    prestart.start()
    import streamlit as st

    from dashboard.components import workers

    st.set_page_config(page_title="KCP Rank Explorer", page_icon=":material/view_in_ar:", layout="wide")
    workers.pool()  # before the page's first request for work, so the first view does not wait for it to start
    st.navigation([
        st.Page("views/explore.py", title="Explore", icon=":material/tune:", default=True),
        st.Page("views/grid.py", title="Rank grid", icon=":material/grid_on:"),
        st.Page("views/network.py", title="Network", icon=":material/account_tree:"),
        st.Page("views/learn.py", title="Learn", icon=":material/school:"),
    ]).run()


# Streamlit runs this file as __main__; a worker process started by multiprocessing imports it as __mp_main__
# (Streamlit makes it the main module), where it must not start another app.
if __name__ == "__main__":
    main()
