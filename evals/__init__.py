"""How a model is judged (DESIGN.md's ``evals/`` layer): ``agentmill eval`` and its metrics.

Evaluations read shards (through ``schemas``) and models (through ``inference``) only; they
import nothing from ``transforms``, ``pipelines`` or ``train``.
"""
