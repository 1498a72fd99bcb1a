"""Vision-language heads on the shapes-vlm testbed: VHD, ablation, VHR, ViT heads, visual sinks."""

CELLS = [
    ("md", "# Vision-language heads\n\n`shapes-vlm` is a 0.9 M-parameter LLaVA (CLIP-style tower, projector, Llama "
           "text model) trained from scratch on a synthetic world of coloured shapes; it ships in `data/` and loads "
           "like any model. Everything here also runs on a real LLaVA-family checkpoint from your HF cache. "
           "See `docs/vision-heads.md`, `docs/visual-sink.md`, `docs/vit-heads.md`."),
    ("code", "import plotly.express as px\nimport headscope\nfrom headscope.vision import shapes as W\n"
             "from headscope.vision import shapes_eval as E\n\n"
             "model = headscope.load_model('shapes-vlm')\nsets = E.default_eval_sets()\n"
             "item = sets['image_qa'][0]\nprint(' '.join(item.question), '->', ' '.join(item.answer))\n"
             "px.imshow(W.render(item.scene).permute(1, 2, 0).numpy(), width=250, height=250)"),
    ("md", "## VHD: which text heads read the image?\n`HeadDivergence` takes `ImagePrompt`s (ids with the image "
           "tokens + pixel values); the image block is found from the model's image token and removed for the "
           "second run. VHD is read at the last prompt token, the first generation step."),
    ("code", "from headscope.analyzers.head_divergence import HeadDivergence\n\n"
             "prompts = [W.item_prompt(it) for it in sets['image_qa'][:48]]\n"
             "hd = HeadDivergence().fit(model, prompts)\nhd.scores_.top(6)"),
    ("code", "hd.plot()"),
    ("md", "Zero the top-4 VHD heads: image questions suffer, text-only questions do not."),
    ("code", "from headscope.interventions import ZeroAblation\n\n"
             "top4 = [tuple(h) for h in hd.scores_.top(4)[['layer', 'head']].values]\n"
             "for name, specs in [('none', []), ('top-4 VHD', [ZeroAblation(heads=top4)])]:\n"
             "    img = E.image_qa_accuracy(model, sets['image_qa'], interventions=specs).accuracy\n"
             "    txt = E.text_qa_accuracy(model, sets['text_qa'], interventions=specs).accuracy\n"
             "    print(f'{name:>10}: image QA {img:.3f}   text QA {txt:.3f}')"),
    ("md", "## VHR\nAt the first generation step VHR picks, layer by layer, the heads above their layer's median VHD "
           "and scales their outputs by α = 2 for the rest of generation. On noisy images (σ = 0.3) this model "
           "hallucinates objects in its descriptions (CHAIR); compare greedy and VHR on 20 scenes."),
    ("code", "from headscope.vision.vhr import vhr_select\nfrom headscope.vision import shapes_vhr as V\n\n"
             "sel = vhr_select(model, W.item_prompt(W.describe_item(sets['describe'][0]), noise=0.3))\n"
             "print('reinforced:', sel.heads)\n"
             "scenes = sets['describe'][:20]\n"
             "for alpha in (None, 2.0):\n"
             "    r = V.vhr_describe(model, scenes, alpha=alpha, noise=0.3)\n"
             "    print('greedy' if alpha is None else 'VHR  ', {k: round(r[k], 3) for k in ('chair_i', 'chair_s', 'recall')})"),
    ("md", "## The vision tower's heads\nAttention distance (pixels between query and key patches, weighted by "
           "attention) and importance by pruning (rise of the answer loss when the head is zeroed)."),
    ("code", "from headscope.analyzers.vit_heads import ViTHeads\n\n"
             "vit = ViTHeads(n_items=48, batch_size=64).fit(model)\nvit.importance_.top(4)"),
    ("code", "vit.plot()"),
    ("md", "## Visual attention sinks (SmolLM2 testbed)\n`smollm2-visual-sinks` puts a run of visual codes into "
           "SmolLM2's input; some codes carry the first token's massive activation. φ > τ finds them; "
           "`var_interventions` redistributes attention from sinks to the other image tokens."),
    ("code", "from headscope.analyzers.visual_sink import VisualSink\n\n"
             "sinks_model = headscope.load_model('smollm2-visual-sinks')\n"
             "vs = VisualSink(n_default_prompts=2).fit(sinks_model)\n"
             "vs.visual_sinks_.query('layer == 15')"),
    ("code", "vs.plot()"),
]
