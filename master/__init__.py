"""What runs in the buildmaster: the config modules (one per config key), the store and publishers.

Kept free of imports so that the store and catalog can be used without loading Buildbot's master.
"""
