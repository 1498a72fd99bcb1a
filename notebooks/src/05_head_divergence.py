"""Head divergence (VHD): which heads read a context segment — a document, a system prompt, few-shot examples."""

CELLS = [
    ("md", "# Head divergence: which heads read the context?\n\n"
           "For each head, how far its output z (`hook_z`, before W_O) moves when a segment of the prompt is "
           "removed: VHD of He et al. (ACL 2025), generalised from image tokens to any text segment. "
           "Two forward passes per prompt, z kept only at the measured positions. See `docs/head-divergence.md`."),
    ("code", "import pandas as pd\nimport headscope\nfrom headscope.analyzers.head_divergence import HeadDivergence\n\n"
             "model = headscope.load_model()"),
    ("md", "## Built-in data: a passage, then a question about it\n"
           "Each item is `(prefix, segment, suffix)`; the segment is the passage. VHD is read at the last token "
           "(the first generation step), where the answer's first word has to come from the passage."),
    ("code", "hd = HeadDivergence().fit(model)\nprint(hd.segments_[0].text)\nhd.scores_.top(10)"),
    ("code", "hd.plot()"),
    ("md", "T-VHD per prompt (Σ over layers of the top-4 heads' VHD), and the heads VHR would select "
           "(above their layer's median):"),
    ("code", "print(hd.token_vhd_.round(1))\nprint(len(hd.heads_), hd.heads_[:8])"),
    ("md", "## The outlier rule\nVHR zeroes heads whose VHD **and** output norm without the segment "
           "(TA = ‖z‖²) are both above μ+σ of their layer. On SmolLM2 the top head L29H1 is such an outlier "
           "in most prompts: it hardly attends to the passage."),
    ("code", "hd.outliers_.query('label == \"L29H1\"')"),
    ("code", "hd_vhr = HeadDivergence(outlier_rule=True).fit(model)\nhd_vhr.scores_.top(8)"),
    ("md", "## Your own segment, measured at every token after it\nA document plus a question; "
           "`plot_tokens()` shows T-VHD at each suffix token: where the model reads the document."),
    ("code", "doc = [(\"Read the notes.\\n\\nNotes:\", \" The vault code is 7316. The spare key is under the blue pot.\",\n"
             "        \"\\n\\nQuestion: Where is the spare key?\\nAnswer: It is under the\")]\n"
             "hd_doc = HeadDivergence(positions='after_segment').fit(model, doc)\nhd_doc.plot_tokens()"),
    ("md", "## A system prompt, replaced instead of removed\n`variant='replaced'` keeps every position "
           "(a same-length filler, here spaces) so RoPE distances do not change."),
    ("code", "sys_prompt = [(\"System:\", \" Always answer in French.\", \"\\nUser: What colour is the sky?\\nAssistant:\")]\n"
             "hd_sys = HeadDivergence(variant='replaced').fit(model, sys_prompt)\nhd_sys.scores_.top(5)"),
    ("md", "## Planted check: a context-reading head\nOn `planted_model()` the induction head (1,3) reads the "
           "earlier copy of the repeated tokens, which lives in the segment: removing the segment moves its "
           "output from one-hot(next token) to one-hot(BOS), VHD = √2. Heads that do not look at the segment "
           "score 0."),
    ("code", "import torch\nfrom headscope.testing import planted_model\ntiny, truth = planted_model()\n"
             "perm = (torch.randperm(46, generator=torch.Generator().manual_seed(0)) + 2).tolist()\n"
             "seg, other = perm[:6], perm[6:]\n"
             "planted = HeadDivergence().fit(tiny, [([1], seg, other + seg[:3])])\n"
             "planted.scores_.top(4)"),
]
