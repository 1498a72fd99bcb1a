"""Vision-language support below the analyzers: the synthetic shapes world, its evaluation sets and data
generators, VHR and VAR generation. The vision analyzers (VisualSink, ViTHeads) live in headscope/analyzers/."""
