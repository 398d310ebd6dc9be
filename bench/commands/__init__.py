"""One module per subcommand of ``python -m bench``.

Each module defines ``HELP``, ``add_arguments(parser)`` and ``run(args) -> exit code``, and
imports heavy libraries (torch) only inside ``run``, so ``--help`` and the reporting commands
stay fast. Adding a subcommand = adding a module here and its name to ``COMMANDS``.
"""

COMMANDS = ("run", "train", "list", "table", "leaderboard", "validate", "import", "compare",
            "merge", "flops", "plot", "protocols", "claims", "download", "sweep")
