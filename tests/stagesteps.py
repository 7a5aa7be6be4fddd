"""What the step tests of ``farm-worker`` stages share: a known result nonce and the lines it signs."""

import json

from twisted.trial import unittest

from gentoo_farm.stageprotocol import RESULT_NONCE_ENV, result_prefix
from gentoo_farm.steps import base

NONCE = "test-nonce"
STAGE_ENV = {RESULT_NONCE_ENV: NONCE}
"""The environment every stage command of a step gets, once :func:`know_the_nonce` is in place."""


def know_the_nonce(test: unittest.TestCase) -> None:
    """Make every step in ``test`` give its stage :data:`NONCE`, so the test can print genuine results."""
    test.patch(base, "new_result_nonce", lambda: NONCE)


def result_line(**values: object) -> str:
    return result_prefix(NONCE) + json.dumps(values) + "\n"
