"""Retrieval vs streaming heads on the bundled model (RazorAttention scores, streaming check)."""

CELLS = [
    ("md", "# Retrieval vs streaming heads\n\nWhich heads need the full context, and which could keep only "
           "a few sink tokens plus a recent window? (RazorAttention scores, DuoAttention-style check.)"),
    ("code", "import headscope\nfrom headscope.analyzers import get_analyzer\n\nmodel = headscope.load_model()\n"
             "sh = get_analyzer('streaming-heads', seg_len=96, n_repeats=2, recent=24, n_random=2).fit(model)\n"
             "sh.kv_table_.sort_values('induction_max', ascending=False).head(8)"),
    ("code", "sh.plot()"),
    ("md", "Copy accuracy on the second copy of a repeated random segment, with each head set restricted to "
           "4 sink tokens + a 24-token recent window:"),
    ("code", "sh.streaming_check_"),
]
