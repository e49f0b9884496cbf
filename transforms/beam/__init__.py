"""The Beam side of the steps: DoFns, CombineFns and ``PTransform`` s that import ``apache_beam``.

Step modules (``transforms/<step>.py``) declare their step and its plain per-record logic
without importing Beam, so a spec validates without it; the Beam classes a step's ``expand``
needs live here, in a module named after the step (``records`` for every step's DoFns).
"""
