"""The built-in intervention kinds, one module per kind, each a self-contained `Intervention` subclass.

A module here is found without being listed anywhere: defining the class registers it in `KINDS`,
and the registry's plugin loading imports every headscope module. `headscope.interventions.specs`
re-exports the built-in classes under their public names.
"""
