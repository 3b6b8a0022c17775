"""Fixtures of the driver tests: a fresh migrated database and real qcow2 disks."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from goldfleet.db.engine import make_engine, migrate
from goldfleet.drivers.base import DiskSpec, DomainSpec


def qemu_img_create(path: Path, size: str, backing: Path | None = None) -> Path:
    cmd = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if backing is not None:
        cmd += ["-b", backing.name, "-F", "qcow2"]
    subprocess.run([*cmd, str(path), size], check=True, cwd=path.parent)
    return path


@pytest.fixture
def db(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    """goldfleet's schema on a fresh SQLite file, as bootstrap makes it."""
    engine = make_engine(f"sqlite:///{tmp_path / 'goldfleet.db'}")
    migrate(engine)
    yield sessionmaker(engine, expire_on_commit=False)
    engine.dispose()


@pytest.fixture(scope="session")
def disks(tmp_path_factory: pytest.TempPathFactory) -> tuple[DiskSpec, ...]:
    """A clone's disks as real qcow2 files: a system overlay on a base layer, temp and data."""
    folder = tmp_path_factory.mktemp("disks")
    base = qemu_img_create(folder / "base.qcow2", "16M")
    system = qemu_img_create(folder / "system.qcow2", "16M", backing=base)
    return (
        DiskSpec(role="system", path=str(system), backing=(str(base),)),
        DiskSpec(role="temp", path=str(qemu_img_create(folder / "temp.qcow2", "8M"))),
        DiskSpec(role="data", path=str(qemu_img_create(folder / "data.qcow2", "8M"))),
    )


@pytest.fixture
def spec(disks: tuple[DiskSpec, ...]) -> Callable[..., DomainSpec]:
    """``spec(name)``: a small VM with the real disks (or ``disks=`` others)."""

    def make(name: str, disks: tuple[DiskSpec, ...] = disks) -> DomainSpec:
        return DomainSpec(name=name, disks=disks, memory_mib=128, vcpus=1)

    return make
