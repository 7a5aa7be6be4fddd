"""Where builds run, one layer per folder: ``latent/`` (the master's side) and ``toolkit/`` (the worker's).

``latent/``: the latent workers the master starts (local and OpenStack), the VM bootstrap, the fleet and
the orphan reaper; they import Buildbot and the core, never the master or the steps. ``toolkit/``
(``farm-worker``, one module per stage) runs on machines without the master: it imports the core and
itself, never Buildbot. No imports here: the toolkit loads this package.
"""
