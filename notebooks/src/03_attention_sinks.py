"""Attention sinks on the bundled model: sink heads and sink rate, massive activations, VAR's phi, ACT hidden sinks."""

CELLS = [
    ("md", "# Attention sinks\n\nOne capture pass over the built-in prompts gives every sink statistic headscope has "
           "(`docs/attention-sinks.md`):\n\n"
           "- **sink heads**: Gu et al.'s importance α of the first token per head, and the *sink rate* "
           "(% of heads with α > ε = 0.3);\n"
           "- **massive activations** (Sun et al.): residual entries with |x| > 100 and ≥ 1000 × the layer's median;\n"
           "- **sink tokens** (VAR): φ = max over the sink dims of |x_d| / RMS(x) entering each layer, φ > τ = 20;\n"
           "- **hidden sinks** (ACT): keys other than the first whose mean received attention s_j exceeds 0.1."),
    ("code", "import numpy as np\nimport headscope\nfrom headscope.analyzers import get_analyzer\n\n"
             "model = headscope.load_model()\nsinks = get_analyzer('attention-sinks').fit(model)   # built-in prompts\n"
             "print(f'sink rate: {sinks.sink_rate_:.1f}% of heads have alpha > {sinks.epsilon}')\n"
             "print(f'{len(sinks.heads_)} sink heads; strongest: {sinks.heads_[:5]}')"),
    ("md", "## Sink heads\nα₁ = mean over the first 64 queries of the attention on the first token (query 0 included, "
           "as in Gu et al.'s code). Layers 0–1 and 10–11 are the only ones without strong sinks."),
    ("code", "sinks.plot()"),
    ("code", "sinks.scores_.top(5)"),
    ("md", "## Massive activations\nDimension 507 of the first token reaches ~18,000–24,000 from layer 11 to 27 "
           "while the median |x| is 2–10. Layers 2–8 already carry 610–745 in the same dim (380–790 × the median): "
           "large, but below Sun et al.'s 1000× criterion."),
    ("code", "print('massive dims:', sinks.massive_dims_, ' sink dims (from the first token):', sinks.sink_dims_)\n"
             "sinks.massive_activations_.groupby(['dim', 'position']).agg(n=('value', 'size'), "
             "max_value=('value', 'max'), min_ratio=('ratio', 'min'))"),
    ("code", "sinks.plot_massive()"),
    ("md", "## Sink tokens: VAR's φ\nφ of every token entering every layer for the first prompt; crosses mark φ > τ."),
    ("code", "sinks.plot_phi(prompt=0)"),
    ("md", "### Calibrating τ\nIn SmolLM2 dim 507 is large on *every* token, so ordinary tokens already have φ ≈ 11–14. "
           "Compare τ with the upper tail of φ over ordinary (non-first) tokens, layer by layer: in layers 3–10 "
           "early ' the' tokens reach φ ≈ 23 and are flagged too; in layers 12–28 only the first token is."),
    ("code", "lengths = [len(t) for t in sinks.tokens_]\nphi = sinks.phi_.copy()\n"
             "for p, n in enumerate(lengths):\n    phi[p, :, 0] = np.nan        # leave out the first token\n"
             "print('layer  first-token phi  99th pct of the others  max of the others')\n"
             "for layer in (2, 5, 10, 15, 20, 25, 29):\n"
             "    print(f'{layer:5d}  {np.nanmean(sinks.phi_[:, layer, 0]):15.1f}  '\n"
             "          f'{np.nanpercentile(phi[:, layer], 99):22.1f}  {np.nanmax(phi[:, layer]):17.1f}')"),
    ("code", "sinks.sink_tokens_.query('position > 0').groupby(['layer', 'token']).size().unstack(fill_value=0)"),
    ("md", "## Hidden sinks (ACT)\nACT's s_j averages the attention key j receives over its N − j queries, so the "
           "last few keys of every prompt pass 0.1 from a handful of queries. Keys seen by at least 10 queries are "
           "the interesting ones (`hidden_sink_min_queries=10` applies the same cut inside the rule)."),
    ("code", "hs = sinks.hidden_sinks_\nn_queries = np.array(lengths)[hs.prompt] - hs.position\n"
             "print(len(hs), 'hidden sinks;', int((n_queries >= 10).sum()), 'with >= 10 queries')\n"
             "hs[n_queries >= 10].groupby('token').size().sort_values(ascending=False).head(8)"),
    ("code", "sinks.hidden_sink_counts_.plot()"),
]
