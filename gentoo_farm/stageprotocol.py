"""What a ``farm-worker`` stage prints for the build step that runs it to read.

The toolkit writes these lines and the steps parse them; neither imports the other, so both
take the markers from here.
"""

RESULT_MARKER = "farm-worker-result: "
"""Prefix of a stdout line holding a JSON object of values for the build's properties."""

ERROR_MARKER = ": error: "
"""What separates ``farm-worker STAGE`` from the message on the stderr line of a failed stage."""

SERIAL_LOG_MARKER = "----- serial console log: "
SERIAL_LOG_END = "----- end of serial console log -----"
"""The frame around the guest's serial console in the boot test's output."""
