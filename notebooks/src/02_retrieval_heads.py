"""Retrieval heads (Wu et al. 2024): needle prompts, greedy answers, the copy-paste score, a decode-time mask."""

CELLS = [
    ("md", "# Retrieval heads\n\nWu et al. (2024) call a head a *retrieval head* when, while the model "
           "copies a needle out of a long context, the head's most-attended token is the very needle token "
           "being generated. The score of a head is the fraction of answer tokens it copy-pastes, averaged "
           "over the samples the model gets right; heads above 0.1 are retrieval heads. "
           "See `docs/retrieval-heads.md`; the bundled model's accuracy is in `docs/retrieval-accuracy.md`."),
    ("code", "import headscope\nfrom headscope.inputs.needle import make_needle_prompts\n"
             "from headscope.generation import greedy_generate, stop_token_ids\n"
             "from headscope.analyzers.retrieval import RetrievalHeads\n\n"
             "model = headscope.load_model()\ntok = model.tokenizer"),
    ("md", "## A needle in a short haystack\nPrompts are built from token pieces, so the needle's span is "
           "known exactly (no fuzzy search)."),
    ("code", "sample = make_needle_prompts(model, 1, [150], seed=2, form='completion')[0]\n"
             "ids = list(sample.prompt_ids)\n"
             "print('needle:', repr(tok.decode(ids[slice(*sample.needle_span)])))\n"
             "print('prompt ends:', repr(tok.decode(ids[-12:])))\n"
             "answer = greedy_generate(model, ids, 10, stop_token_ids(tok))\nprint('answer:', repr(tok.decode(answer)))"),
    ("md", "## Score the heads\nThe default is teacher-forced: greedy-decode the answer, then one forward over "
           "prompt + answer through `capture()`. `mode='generate'` runs the paper's step-by-step loop instead "
           "(same numbers, tested)."),
    ("code", "fit = RetrievalHeads(n_samples=8, context_lengths=(120,)).fit(model)\n"
             "print(f'accuracy {fit.accuracy_:.0%}, {len(fit.heads_)} heads > {fit.threshold}')\n"
             "fit.per_sample_[['needle_id', 'context_length', 'depth', 'output', 'success', 'best_head']]"),
    ("code", "fit.plot()"),
    ("code", "fit.scores_.top(6)"),
    ("md", "## The same score on repeated random tokens\nCopying the continuation of a repeated random segment "
           "is retrieval without semantics: the first copy is the needle."),
    ("code", "rep = RetrievalHeads(n_samples=3).fit(model, 'repeats')\nrep.scores_.top(6)"),
    ("md", "## Mask the top heads while decoding\n`greedy_generate(interventions=...)` applies intervention specs "
           "with the generation position rules: `UniformAttention(positions='decode')` makes the heads attend "
           "uniformly on the decode queries only (the last prompt token and every generated one), while the "
           "prefill KV cache stays unmasked, as in the paper's masking experiment. The top-10 heads against "
           "10 random heads from outside the top 100 (the paper's control), on 4 fresh prompts."),
    ("code", "import random\nfrom headscope.analyzers.retrieval import rouge1_recall\n"
             "from headscope.interventions import UniformAttention\n\n"
             "ranked = [tuple(x) for x in fit.scores_.top(270)[['layer', 'head']].values]\n"
             "test = make_needle_prompts(model, 4, [120], seed=5)\n"
             "for name, heads in [('no', []), ('top-10', ranked[:10]), ('10 random', random.Random(0).sample(ranked[100:], 10))]:\n"
             "    mask = [UniformAttention(heads=heads, positions='decode')] if heads else []\n"
             "    answers = [tok.decode(greedy_generate(model, list(s.prompt_ids), 10, stop_token_ids(tok), interventions=mask))\n"
             "               for s in test]\n"
             "    correct = sum(rouge1_recall(s.answer_text, a) > 0.5 for s, a in zip(test, answers))\n"
             "    print(f'{name:>9} heads masked: {correct}/{len(test)} correct', [a.strip() for a in answers])"),
]
