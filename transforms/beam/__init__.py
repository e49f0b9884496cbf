"""The Beam side of the steps: DoFns, CombineFns and ``PTransform`` s that import ``apache_beam``.

Step modules (``transforms/<step>.py``) declare their step and its plain per-record logic
without importing Beam, so a spec validates without it; the Beam classes a step's ``expand``
needs live here, in a module named after the step (``records``: the DoFns every step uses and
the ``PTransform`` that applies a step). The Beam helpers steps share, the disk barriers and
sorts of :mod:`transforms.spill` and the record coders of :mod:`transforms.coders`, are imported
by ``expand`` too.
"""
