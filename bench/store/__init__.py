"""What is kept: the SQLite results store, exported runs, merging stores, imported TSV claims
(no torch)."""
