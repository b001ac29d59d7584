"""The ``fedistill`` command line, presets, simulation runner, baselines and reports."""
