"""Model inference that a pipeline step and an evaluation both need (DESIGN.md: it lives below
both). Imports ``schemas`` only; no Beam, no ``transforms``, ``pipelines``, ``train`` or ``evals``."""
