"""What a ``farm-worker`` stage prints for the build step that runs it to read.

The toolkit writes these lines and the steps parse them; neither imports the other, so both
take the markers from here.
"""

RESULT_MARKER = "farm-worker-result: "
"""Prefix of a stdout line holding a JSON object of values for the build's properties."""

RESULT_NONCE_ENV = "FARM_WORKER_RESULT_NONCE"
"""Where a build step hands the stage a fresh secret for one command.

A stage's stdout also carries what its tools print (every package build emerge runs), and a package
can print anything. The stage takes the nonce out of its environment before it runs any tool, so no
child inherits it, and writes it into each result line; the step reads only lines that carry it.
"""


def result_prefix(nonce: str) -> str:
    """What starts a result line: the marker, then the nonce when the stage was given one."""
    return f"{RESULT_MARKER}{nonce} " if nonce else RESULT_MARKER


ERROR_MARKER = ": error: "
"""What separates ``farm-worker STAGE`` from the message on the stderr line of a failed stage."""

SERIAL_LOG_MARKER = "----- serial console log: "
SERIAL_LOG_END = "----- end of serial console log -----"
"""The frame around the guest's serial console in the boot test's output."""
