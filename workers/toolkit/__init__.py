"""The worker-side toolkit: one module per build stage, each a ``farm-worker`` subcommand.

A stage module has a docstring (its first line is the subcommand's help), ``add_arguments(parser)``
and ``run(args) -> None``. It prints progress as it goes (Buildbot streams stdout into the step log),
raises :class:`StageError` with a message naming what went wrong, and hands values back to the
build with :func:`report`.
"""

import json
import os

from gentoo_farm.stageprotocol import RESULT_NONCE_ENV, result_prefix

_result_nonce = ""


class StageError(Exception):
    """A failure the user can act on; the message is shown as-is, without a traceback."""


def take_result_nonce() -> None:
    """Keep the step's nonce for :func:`report` and remove it from the environment children inherit."""
    global _result_nonce
    _result_nonce = os.environ.pop(RESULT_NONCE_ENV, "")


def report(**values: object) -> None:
    """Hand values back to the Buildbot step as build properties (read from this line of stdout)."""
    print(result_prefix(_result_nonce) + json.dumps(values, sort_keys=True), flush=True)


def progress(message: str) -> None:
    print(message, flush=True)


__all__ = ["StageError", "progress", "report", "take_result_nonce"]
