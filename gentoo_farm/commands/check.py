"""Validate farm.toml and say what the farm will do."""

import argparse

from gentoo_farm.config import FarmConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace, config: FarmConfig) -> int:
    print(f"{config.basedir / 'farm.toml'}: OK")
    print(f"  web UI        {config.master.buildbot_url}")
    print(f"  local workers {config.workers.local.count}")
    for pool in config.workers.openstack:
        print(f"  openstack     {pool.name}: cloud {pool.cloud}, up to {pool.max_instances} instances")
    print(f"  store         {config.store.type} ({config.store.bucket or config.store.path})")
    for target in config.glance:
        print(f"  glance        {target.cloud} ({target.visibility}, keep {target.keep})")
    return 0
