"""Where builds run: the latent workers the master starts, the VM bootstrap, and ``toolkit/``.

The latent workers (local and OpenStack) and the bootstrap import Buildbot and the core, never the
master or the steps. The toolkit (``farm-worker``, one module per stage) runs on machines without the
master: it imports the core and itself, never Buildbot. No imports here: the toolkit loads this package.
"""
