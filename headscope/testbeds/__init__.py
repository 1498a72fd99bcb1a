"""headscope's testbeds: models built for a method, with a known answer planted or trained in.

Each module registers its testbed with `headscope.models.register_testbed`, so `load_model(name)` finds
it: the safety-tuned SmolLM2 (`safety`), the tiny shapes-world LLaVA (`shapes_vlm`) and SmolLM2 with a
visual codebook and planted sink codes (`visual_sinks`). See docs/contributing.md to add one.
"""
