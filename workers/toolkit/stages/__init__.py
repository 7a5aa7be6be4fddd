"""The build stages, one module each, every one a ``farm-worker`` subcommand (``STAGES`` in ``cli.py``).

A stage imports the toolkit's helpers (the modules beside this package) and the core, never another
stage: what two stages share is a helper.
"""
