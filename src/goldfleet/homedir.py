"""Where the home is: ``$GOLDFLEET_HOME``, else ``~/.local/share/goldfleet``.

Apart from :mod:`goldfleet.config` because every CLI command needs it to find the server and
token, and the settings machinery (pydantic-settings) costs a tenth of a second to import;
only ``init`` and ``serve`` read the settings.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_HOME = Path("~/.local/share/goldfleet")


def home_dir() -> Path:
    return Path(os.environ.get("GOLDFLEET_HOME") or DEFAULT_HOME).expanduser().resolve()
