"""Building blocks shared by the pages: the sidebar selection, cached kcp calls, figures and the structure diagram."""
