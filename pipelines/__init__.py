"""How steps are assembled: spec validation, the Beam DAG, runs and the ``agentmill`` command."""
