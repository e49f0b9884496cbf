"""Training stage: ``deepspeed train/sft.py`` on agentmill shards (see docs/training.md)."""
