"""Reading finished runs: compare, results tables, sweep summaries."""
