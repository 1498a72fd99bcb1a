"""One module per model family that needs anything beyond what the TransformerLens bridge gives.

Each module registers a `headscope.models.family.Family` (see that module for the fields): readout
quirks, a blocked-attention forward for HF classes that compute attention inline, a refusal with its
reason, the kinds of a hybrid's layers. A family that needs nothing has no module here: it runs on the
generic paths and the architecture sweep (`headscope.testing.sweep`) says so.

Adding a family: docs/contributing.md, "A new architecture family".
"""
