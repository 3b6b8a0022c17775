"""Settings: ``$GOLDFLEET_HOME/config.toml`` overridden by ``GOLDFLEET_*`` environment variables.

Nothing is read at import time; :func:`load_settings` is called by the bootstrap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from goldfleet.homedir import DEFAULT_HOME, home_dir

__all__ = ["DEFAULT_HOME", "Settings", "home_dir", "load_settings"]


class Settings(BaseSettings):
    """Every setting of a goldfleet server; the defaults are the embedded single-machine setup."""

    model_config = SettingsConfigDict(env_prefix="GOLDFLEET_", extra="forbid")

    home: Path = Field(default_factory=home_dir)
    database_url: str = ""  # empty: SQLite file in the home
    store_dir: Path | None = None  # empty: <home>/store
    host: str = "127.0.0.1"
    port: int = 8437
    driver: str = "sim"
    max_virtual_size: int = 2 << 40  # 2 TiB
    max_chain_depth: int = 8
    workers: int = 2  # volumes built at once by a bulk operation
    batch_size: int = 25  # clones committed together by a bulk operation
    inspect_cpu_seconds: int = 30
    inspect_memory: int = 1 << 30
    # drivers
    sim_hosts: list[str] = ["sim-host-1", "sim-host-2"]
    sim_plan: str = ""  # JSON fault plan for the sim driver, see docs/concepts.md
    libvirt_uris: list[str] = ["qemu:///system"]  # one per host
    driver_timeout: float = 120.0  # a driver call that takes longer fails the clone
    shutdown_timeout: float = 60.0  # graceful shutdown, then forced off
    # operations
    lease_seconds: float = 10.0  # a server silent this long loses the work it claimed
    per_host_limit: int = 4  # default: clones rebuilt at once on one host
    reconcile_seconds: float = 2.0  # how often power states are read back from the driver
    # guests (docs/guests.md): how often running clones' agents are read and their network
    # access evaluated against their template's quarantine policy; 0: only on request
    compliance_seconds: float = 60.0
    # the libvirt network each clone's one interface joins (its nwfilter is switched by the
    # quarantine); empty: clones have no network interface
    network: str = ""
    # a streamed answer (bundle export, progress) whose client reads nothing this long is aborted
    stall_seconds: float = 60.0
    # sites (docs/sites.md)
    role: Literal["hq", "site"] = "hq"
    upstream_url: str = ""  # at a site: HQ's URL (default: the one given to `site join`)
    # edge stores (docs/edge.md): host H's local copy of layers is the folder edge_root/H,
    # reached here and on H at that same path; empty: off, clones read the site store
    edge_root: Path | None = None
    # a version that becomes current is copied to every host's edge store in the background
    # (docs/edge.md "Fed when a version becomes current"); None: on at a site, off at hq
    edge_feed: bool | None = None
    edge_feed_limit: int | None = None  # bytes a second of those copies; None: no limit
    sync_retry_seconds: float = 300.0  # at a site: a failed scheduled sync is retried after this
    # host updates (docs/hosts.md): how goldfleet reads a host's software, and for the
    # local-root agent the folder holding each host's root (ROOT/HOST); empty: <home>/host-roots
    host_agent: str = "local-root"
    host_roots: Path | None = None
    # the ssh agent (host_agent = "ssh", docs/hosts.md "The ssh agent"): host H is reached at
    # ssh_hosts[H] ("[user@]address[:port]"; not listed: at its own name), as ssh_user on
    # ssh_port, with the private key ssh_key (empty: <home>/ssh/id_ed25519), its host key checked
    # against ssh_known_hosts (empty: <home>/ssh/known_hosts; entries named by the host's
    # goldfleet name); ssh_roots, when set, is a folder on each host holding its root at
    # ssh_roots/H (dpkg --root, as host_roots; for tests), empty: the host's own /
    ssh_hosts: dict[str, str] = {}
    ssh_user: str = "root"
    ssh_port: int = 22
    ssh_key: Path | None = None
    ssh_known_hosts: Path | None = None
    ssh_roots: str = ""
    ssh_connect_timeout: float = 10.0  # seconds to reach a host
    ssh_timeout: float = 120.0  # a read of a host over ssh; an apply gets 600 s
    # a rolling update pauses on a host not up again this long after its reboot
    host_reboot_timeout: float = 900.0
    # what the host agent runs on a host (over ssh) when the driver cannot reboot it or restart
    # its toolstack itself (the libvirt driver; docs/host-updates.md "Reboots and toolstack
    # restarts over the host agent")
    host_reboot_command: str = "systemctl reboot"
    host_toolstack_command: str = "systemctl restart libvirtd"
    # a rolling update pauses on a host whose libvirt does not answer this long after the
    # toolstack restart
    host_toolstack_timeout: float = 120.0

    @field_validator("edge_root", mode="before")
    @classmethod
    def _empty_edge_root_is_off(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("host_reboot_command", "host_toolstack_command")
    @classmethod
    def _a_command(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("give the command a host runs (docs/host-updates.md)")
        return value

    @field_validator("host_roots", "ssh_key", "ssh_known_hosts", mode="before")
    @classmethod
    def _empty_host_roots_is_default(cls, value: object) -> object:
        return None if value == "" else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = TomlConfigSettingsSource(settings_cls, toml_file=home_dir() / "config.toml")
        return (init_settings, env_settings, toml)

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'goldfleet.db'}"

    @property
    def hosts_root(self) -> Path:
        return self.host_roots or self.home / "host-roots"

    @property
    def ssh_key_path(self) -> Path:
        return self.ssh_key or self.home / "ssh" / "id_ed25519"

    @property
    def ssh_known_hosts_path(self) -> Path:
        return self.ssh_known_hosts or self.home / "ssh" / "known_hosts"

    @property
    def store(self) -> Path:
        return self.store_dir or self.home / "store"


def load_settings(**overrides: object) -> Settings:
    return Settings(**overrides)  # type: ignore[arg-type]
