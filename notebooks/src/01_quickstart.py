"""Quick start: capture per-head statistics of the bundled model, look at them, save them."""

CELLS = [
    ("md", "# headscope quick start\n\nCapture per-head statistics of the bundled SmolLM2-135M-Instruct, "
           "look at them, save them. Runs offline on a laptop CPU in about a minute."),
    ("code", "import headscope\nfrom headscope.capture import capture, default_reducers\n"
             "from headscope.inputs import repeated_random_tokens\n\n"
             "model = headscope.load_model()\nheadscope.model_info(model)"),
    ("md", "## Sink heads on ordinary text\nFirst-token mass: how much each head's queries attend to position 0."),
    ("code", "prompts = [\n    'The lighthouse keeper climbed the spiral stairs every evening at dusk.',\n"
             "    'To make a simple bread, mix flour, water, salt and yeast in a large bowl.',\n"
             "    'Alice gave Bob a red notebook. Later that day Bob gave Alice a blue pen.',\n]\n"
             "res = capture(model, prompts, default_reducers())\nsink = res['first_token_mass']\nsink.plot()"),
    ("code", "sink.top(5)"),
    ("md", "## Induction heads on repeated random tokens\nEach probe is `<|im_start|>` + 50 random tokens, twice."),
    ("code", "probes = repeated_random_tokens(model.cfg.d_vocab, seq_len=50, n_prompts=4, first_token=1)\n"
             "ind = capture(model, probes)['induction_score']\nind.top(5)"),
    ("code", "ind.plot()"),
    ("md", "## Long DataFrames and files\nEvery result carries its provenance (model, reducer, parameters, version)."),
    ("code", "df = ind.to_dataframe()\ndf.head()"),
    ("code", "import tempfile, pathlib\npath = pathlib.Path(tempfile.mkdtemp()) / 'induction.parquet'\n"
             "ind.save(path)\nheadscope.HeadScores.load(path) == ind"),
    ("md", "## Planted heads: a model whose answer is known\n`headscope.testing.planted_model()` builds a tiny "
           "Llama with a sink, previous-token, local-window and induction head at known positions."),
    ("code", "from headscope.testing import induction_tokens as tiny_probes, planted_model\n"
             "tiny, truth = planted_model()\nprint(truth)\n"
             "tiny_res = capture(tiny, tiny_probes(tiny, seq_len=20, batch=2))\n"
             "tiny_res['induction_score'].top(3)"),
]


