"""The `farm` subcommands, one module each (see gentoo_farm.cli.COMMANDS)."""
