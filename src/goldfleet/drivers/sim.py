"""The ``sim`` driver: a simulated hypervisor whose state lives in goldfleet's database.

Model: one host (``sim-host-1``) holds the defined VMs; a VM is ``stopped`` or ``running``;
start and shutdown change the state at once (no latency in this model yet). Unknown VMs raise
:class:`DriverError` like a real hypervisor would. It is what the embedded default, the demo,
the tests and the scale benchmarks use; it boots nothing.
"""

from __future__ import annotations

from dataclasses import asdict

from sqlalchemy.orm import Session, sessionmaker

from goldfleet.db.tables import SimDomain
from goldfleet.drivers.base import Capabilities, DomainSpec, Driver, DriverError


class SimDriver(Driver):
    name = "sim"
    capabilities = Capabilities(sessions=False, migrate=False)

    def __init__(self, factory: sessionmaker[Session], host: str = "sim-host-1") -> None:
        self.factory = factory
        self.host = host

    def define(self, *, spec: DomainSpec) -> None:
        with self.factory() as s:
            dom = s.get(SimDomain, spec.name)
            disks = {"disks": [asdict(d) for d in spec.disks]}
            if dom is None:
                s.add(SimDomain(name=spec.name, host=self.host, state="stopped", disks=disks))
            else:
                dom.disks = disks
            s.commit()

    def undefine(self, *, name: str) -> None:
        with self.factory() as s:
            dom = s.get(SimDomain, name)
            if dom is not None:
                if dom.state == "running":
                    raise DriverError(f"VM {name} is running; shut it down before undefining it")
                s.delete(dom)
                s.commit()

    def _set_state(self, name: str, state: str) -> None:
        with self.factory() as s:
            dom = s.get(SimDomain, name)
            if dom is None:
                raise DriverError(f"VM {name} is not defined on {self.host}")
            dom.state = state
            s.commit()

    def start(self, *, name: str) -> None:
        self._set_state(name, "running")

    def shutdown(self, *, name: str, timeout: float = 60.0) -> None:
        self._set_state(name, "stopped")

    def state(self, *, name: str) -> str:
        with self.factory() as s:
            dom = s.get(SimDomain, name)
            return "undefined" if dom is None else dom.state
