"""Interventions and the exact all-heads scan on the bundled model."""

CELLS = [
    ("md", "# Interventions and all-heads scans\n\nSpecs are small declarative objects; `apply()` attaches them for "
           "the duration of a `with` block and always removes them. `scan()` gives the effect of every single-head "
           "intervention in a few batched forwards, equal to the one-forward-per-head loop."),
    ("code", "import torch\nimport headscope\nfrom headscope.interventions import UniformAttention, ZeroAblation, apply, scan\n\n"
             "model = headscope.load_model()\n"
             "prompts = ['The capital of France is', 'The capital of Germany is', 'The capital of Spain is']\n"
             "answers = [(' Paris', ' Rome'), (' Berlin', ' Rome'), (' Madrid', ' Rome')]\n"
             "tok = model.tokenizer\nids = tok(prompts[0], add_special_tokens=False)['input_ids']\n"
             "with torch.no_grad():\n    clean = model(torch.tensor([ids]))[0, -1]\n"
             "    with apply(model, [UniformAttention(heads=[(l, h) for l in range(20, 30) for h in range(9)])]):\n"
             "        ablated = model(torch.tensor([ids]))[0, -1]\n"
             "print('clean   :', tok.decode(clean.argmax()), '| upper 10 layers uniform:', tok.decode(ablated.argmax()))"),
    ("md", "Zero-ablate each head alone and measure the change in logit(correct) − logit(' Rome') at the last "
           "position (negative = the head helped):"),
    ("code", "effects = scan(model, prompts, 'zero', 'logit_diff', metric_kwargs={'answers': answers})\n"
             "mean = effects.mean_over_prompts()\nmean.top(8, better='lower')"),
    ("code", "mean.plot(title='Change in logit difference when one head is zeroed')"),
    ("md", "Specs serialise, so an experiment can be written down and replayed:"),
    ("code", "spec = ZeroAblation(heads=[(17, 3), (18, 6)], positions=(4, None))\nspec.to_dict()"),
]
