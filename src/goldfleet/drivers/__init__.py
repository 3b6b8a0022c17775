"""Hypervisor drivers behind one small interface: ``sim`` (the simulator), later ``libvirt``."""
