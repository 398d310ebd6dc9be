"""certbench's version: in every run card's environment and on every leaderboard page."""

__version__ = "0.1.0"  # as pyproject.toml's [project] version
