"""One module per ``obliviate`` subcommand: ``HELP``/``DESCRIPTION``, ``add_arguments`` and ``run``."""
