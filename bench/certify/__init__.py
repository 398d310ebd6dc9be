"""The certificate and its bounds: noise, Monte-Carlo counts, statistics, budget, procedures and
the records of a run (records, stats, metrics and budget need no torch)."""
