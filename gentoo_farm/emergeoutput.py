"""What Portage's ``emerge`` prints about each package, read by the worker's emerge stage (which
packages came from where) and by the master's emerge step (its live status text)."""

import re

EMERGING = re.compile(
    r"^>>> Emerging (?P<binary>binary )?\((?P<number>\d+) of (?P<total>\d+)\) (?P<cpv>[^\s:]+)"
)
FAILED = re.compile(r"^ \* ERROR: (?P<cpv>[^\s:]+)(?:::\S+)? failed \((?P<phase>\w+) phase\)")
