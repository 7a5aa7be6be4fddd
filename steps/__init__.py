"""Buildbot steps; ``FarmWorkerStep`` (base.py) runs one ``farm-worker`` stage on the worker.

Steps import Buildbot and the core, never the master or the workers.
"""
