"""The master's side of the workers: the latent workers it starts, how they boot, who cleans up after them.

``local.py`` (a ``buildbot-worker`` process per build, its builds in a user namespace, ``userns.py``),
``openstack.py`` (a server per build, booted by ``bootstrap.py``'s user-data), ``fleet.py`` (the cloud
calls every OpenStack worker and reaper shares), ``reaper.py`` (this farm's orphaned servers) and
``instance_password.py``. They import Buildbot and the core, never the master, the steps or the toolkit.
No imports here: ``python -m gentoo_farm.workers.latent.userns`` runs without loading Buildbot.
"""
