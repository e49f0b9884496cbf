"""Model-free measures of what samples teach, shared by the ``audit`` step and the cleaning
steps (identity filtering, evaluation-side decontamination, near-duplicate removal).

Every function here is pure and deterministic; nothing imports Beam.
"""
