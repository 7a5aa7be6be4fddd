"""The fleet's own pool for long waits: servers booting at once leave Twisted's default pool free."""

import threading
import time

from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from gentoo_farm.workers.latent.fleet import OpenStackFleet

BOOTING = 20


class FleetWaits(unittest.TestCase):
    async def test_twenty_boot_waits_leave_the_default_pool_free(self) -> None:
        fleet = OpenStackFleet("farm")
        booted = threading.Event()
        self.addCleanup(booted.set)
        # As OpenStackLatentWorker waits for a server to become ACTIVE (up to boot_timeout).
        waits = [fleet.wait(reactor, booted.wait, 60) for _ in range(BOOTING)]
        self.addCleanup(fleet._current().waits.stop)

        started = time.monotonic()
        # What a login's bcrypt check, a store call or any other SDK call gets meanwhile.
        await threads.deferToThread(time.sleep, 0)
        self.assertLess(time.monotonic() - started, 1)

        booted.set()
        self.assertEqual(await defer.gatherResults(waits), [True] * BOOTING)

    async def test_a_reconfigured_fleet_waits_in_the_same_pool(self) -> None:
        before = OpenStackFleet("farm")
        first = await before.wait(reactor, lambda: threading.current_thread().name)
        after = OpenStackFleet("farm").take_over(before)
        self.addCleanup(after._current().waits.stop)
        second = await after.wait(reactor, lambda: threading.current_thread().name)
        self.assertTrue(first.startswith("PoolThread-openstack-waits-farm"), first)
        self.assertTrue(second.startswith("PoolThread-openstack-waits-farm"), second)
        self.assertIs(after._current().waits, before._current().waits)
