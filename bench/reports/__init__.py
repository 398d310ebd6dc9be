"""What is shown: tables, leaderboards, plots, DataFrames, fixed vs sequential (no torch)."""
