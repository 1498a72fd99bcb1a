"""Vision-language support: image spans, the synthetic shapes world and its VLM testbed, VLM head tools."""
