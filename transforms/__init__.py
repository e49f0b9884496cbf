"""agentmill steps: one module per step, each a pure record function plus a Beam PTransform."""

import logging


class _QuietOptionalBeamImports(logging.Filter):
    """Drops Beam's import-time warning about optional GCP client libraries we do not use."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "apitools not found" not in record.getMessage()


logging.getLogger().addFilter(_QuietOptionalBeamImports())
