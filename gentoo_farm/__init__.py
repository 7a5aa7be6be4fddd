"""gentoo-farm's core and the ``farm`` command.

The core is what neither schedules nor runs a step: farm.toml (config.py), the farm directory, the
store backends and catalog, the Glance publisher, passwords, the recipe repositories and the lines a
stage prints for its step (stageprotocol.py). It never imports Buildbot, the master, the steps or the
workers. cli.py and commands/ are the ``farm`` command, on top of everything. The repository's master/,
steps/ and workers/ are installed as gentoo_farm.master, gentoo_farm.steps and gentoo_farm.workers.
"""
