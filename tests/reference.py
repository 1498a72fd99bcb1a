"""The independent plain-loop reference statistics (they live in `headscope.testing.reference_loops`
so the architecture conformance checks can use them too; still no code shared with the reducers)."""

from headscope.testing.reference_loops import reference_stats  # noqa: F401
