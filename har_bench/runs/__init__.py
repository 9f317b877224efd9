"""The run directory as a format: file names and status, artifacts, resume."""
