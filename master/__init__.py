"""What runs in the buildmaster: master.cfg composed from one module per Buildbot config key.

buildmaster.py calls workers.py, builders.py (with a factory module per builder in factories/),
schedulers.py, change_sources.py, www.py (with the Images page) and services.py. The master imports the
steps, the latent workers and the core; nothing else imports the master. No imports here, so that loading
one module does not load them all.
"""
