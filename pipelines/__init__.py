"""How steps are assembled: spec validation, the Beam DAG, runs and the ``agentmill`` command."""

# transforms installs the logging filter for Beam's import-time "apitools not found" warning; it
# must be in place before any module of this package imports apache_beam.
import transforms  # noqa: F401
