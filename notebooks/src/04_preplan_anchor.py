"""Preplan-and-Anchor: local vs global heads, WAAD and FAI per response token, on the bundled model."""

CELLS = [
    ("md", "# Preplan-and-Anchor: local and global heads, WAAD and FAI\n\n"
           "Li et al. (arXiv:2510.13554) split heads by how far back they look over a response: the 30% with the "
           "lowest attention-weighted backward distance are *local*, the 30% with the highest are *global*. "
           "The local group's **WAAD** (windowed average attention distance) rises where the model reaches back "
           "past the current phrase (chunk boundaries, 'preplan' tokens); the global group's **FAI** (future "
           "attention influence) is how much later response tokens attend to a token ('anchor' tokens).\n\n"
           "Input: (prompt, response) pairs. Default: eight GSM8K-style word problems with step-by-step answers "
           "written for headscope (`data/preplan/pairs.json`), wrapped in the model's chat template. "
           "About a minute on a laptop CPU."),
    ("code", "import headscope\nfrom headscope.analyzers.preplan_anchor import PreplanAnchor, load_pairs\n\n"
             "model = headscope.load_model()\npairs = load_pairs()\npairs[0]"),
    ("md", "## Fit: two capture passes\nPass 1 measures each head's mean backward distance over the response "
           "queries; pass 2 averages the attention maps of each head group per prompt (one T×T map per group, "
           "never layers × heads × T × T)."),
    ("code", "pa = PreplanAnchor()          # local/global fraction 0.3, W = 10, horizon to the end, q = 0.4\n"
             "pa.fit(model, pairs)\npa.plot()   # circles: local heads, crosses: global heads"),
    ("md", "## Where the groups sit"),
    ("code", "import pandas as pd\n"
             "groups = pd.DataFrame([(l, 'local') for l, _ in pa.local_heads_] + [(l, 'global') for l, _ in pa.global_heads_],\n"
             "                      columns=['layer', 'group'])\n"
             "pd.crosstab(groups.layer, groups.group).T   # heads per layer in each group"),
    ("code", "pa.scores_.top(8, better='lower')   # the most local heads (lowest distance)"),
    ("md", "## WAAD and FAI over one response\nTop: WAAD of the local group, triangles on preplan tokens "
           "(top 40% of |WAAD_t − WAAD_t+1|). Bottom: FAI of the global group, anchors in orange (top 40%). "
           "Hover for each token's values."),
    ("code", "pa.plot_tokens(0)"),
    ("code", "pa.anchor_tokens_.query('prompt == 0').sort_values('value', ascending=False).head(10)"),
    ("code", "pa.preplan_tokens_.query('prompt == 0').sort_values('value', ascending=False).head(10)"),
    ("md", "## The RL setting\nIn training the paper reads 5 evenly spaced layers of the middle third and a "
           "horizon of 10–50 tokens. The 'to the end of the response' horizon averages late tokens over few, "
           "nearby queries, which inflates their FAI; the bounded horizon removes that drift."),
    ("code", "rl = PreplanAnchor(layers='middle', horizon=(10, 50)).fit(model, pairs)\n"
             "print('layers', rl.layers_)\nrl.plot_tokens(0)"),
    ("md", "## Saving\n`scores_` is a `HeadScores`, `waad_` / `fai_` are `TokenScores`: all save to JSON with "
           "their provenance."),
    ("code", "import tempfile, pathlib\nout = pathlib.Path(tempfile.mkdtemp())\n"
             "pa.fai_.save(out / 'fai.json'); pa.scores_.save(out / 'distance.json')\n"
             "headscope.TokenScores.load(out / 'fai.json').to_dataframe().head()"),
]
