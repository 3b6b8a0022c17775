"""The command line: a thin httpx client of the API (plus ``init``, ``serve`` and ``demo``)."""
