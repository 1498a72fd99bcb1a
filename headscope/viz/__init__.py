"""Generic figures (head heatmaps, token plots, top-heads bars), static export and HTML reports for
headscope results (plotly only; no torch). An analyzer's own figures live beside it in headscope/analyzers/."""

from headscope.viz.export import BrowserNotFound, export_figure, export_figures, find_browser
from headscope.viz.figures import head_heatmap, token_plot, top_heads_bar
from headscope.viz.report import ReportSection, write_report
from headscope.viz.token_view import TokenView

__all__ = [
    "BrowserNotFound",
    "ReportSection",
    "TokenView",
    "export_figure",
    "export_figures",
    "find_browser",
    "head_heatmap",
    "token_plot",
    "top_heads_bar",
    "write_report",
]
