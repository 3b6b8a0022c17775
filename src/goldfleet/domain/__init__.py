"""The domain: goldfleet's rules as plain Python, with no I/O and no framework imports."""
