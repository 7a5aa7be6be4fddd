"""Where Portage's programs are: beside this interpreter (the Portage the farm runs with), else on PATH."""

import shutil
import sys
from pathlib import Path

INSTALL_HINT = "install Portage (PyPI 'portage' or sys-apps/portage)"


def portage_tool(name: str) -> str | None:
    """The path of Portage's ``name`` (``emerge``, ``gpkg-sign``), or None when there is none."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    return shutil.which(name)
