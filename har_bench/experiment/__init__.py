"""One run from config to metrics.json: components, stages, reporters, the run."""
