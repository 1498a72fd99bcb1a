"""Gradient head importance (Michel et al.) on the bundled model."""

CELLS = [
    ("md", "# Head importance by gradient\n\nOne forward and one backward pass per prompt give |dL/dξ_h| for every "
           "head at once (ξ_h gates the head's output). A cheap first ranking before exact ablations."),
    ("code", "import headscope\nfrom headscope.analyzers import get_analyzer\nfrom headscope.inputs.prompts import load_prompts\n\n"
             "model = headscope.load_model()\nimp = get_analyzer('head-importance', top_k=10).fit(model, load_prompts()[:2])\n"
             "imp.scores_.top(10)"),
    ("code", "imp.plot()"),
    ("md", "Per-layer normalisation makes heads comparable within a layer; `raw_importance_` compares across layers:"),
    ("code", "import numpy as np\nraw = imp.raw_importance_\nlayer, head = np.unravel_index(raw.argmax(), raw.shape)\n"
             "print(f'largest raw importance: L{layer}H{head} = {raw.max():.4f}')"),
]
