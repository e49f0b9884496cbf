"""Entry point: ``deepspeed train/sft.py --data DIR --model NAME --output OUT ...`` (see docs/training.md).

Also runs under ``torchrun --nproc_per_node N train/sft.py ...`` and, for one process, as
``python train/sft.py ...``. All logic lives in importable modules (``train.trainer`` and below).
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):
    # Launched as a script: make the repository root importable and keep train/ itself off the
    # path (its modules must not shadow top-level packages).
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
    sys.path.insert(0, os.path.dirname(_here))

from train.trainer import main

if __name__ == "__main__":
    main()
