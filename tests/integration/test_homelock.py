"""The home's lock (goldfleet/homelock.py) on a real file system: one holder at a time, the
refusal names the holder, the home's id survives restarts, the lock is not inherited."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from goldfleet.errors import Conflict
from goldfleet.homelock import LOCK_FILE, lock_home


def test_a_held_home_is_refused_with_the_holders_pid_and_url(tmp_path):
    home = tmp_path / "home"
    first = lock_home(home)
    first.announce(url="http://127.0.0.1:9999")
    with pytest.raises(Conflict) as refused:
        lock_home(home)
    message = refused.value.message
    assert f"home {home} is already served by goldfleet server pid {os.getpid()}" in message
    assert "at http://127.0.0.1:9999" in message and "one server per home" in message
    first.release()


def test_the_next_holder_gets_the_same_home_id(tmp_path):
    home = tmp_path / "home"
    first = lock_home(home)
    home_id = first.home_id
    first.release()
    again = lock_home(home)
    assert again.home_id == home_id
    assert (home / LOCK_FILE).stat().st_mode & 0o777 == 0o600
    again.release()
    other = lock_home(tmp_path / "other")
    assert other.home_id != home_id
    other.release()


def test_a_program_the_holder_runs_does_not_keep_the_lock(tmp_path):
    home = tmp_path / "home"
    held = lock_home(home)
    # a child that outlives its parent's lock must not hold it (qemu-img, ssh…), even one
    # started without closing the descriptors it could inherit
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], close_fds=False)
    try:
        held.release()
        # the child shares the lock from its fork to its exec (microseconds), no longer
        deadline = time.monotonic() + 5
        while True:
            try:
                lock_home(home).release()
                break
            except Conflict:
                assert time.monotonic() < deadline, "the child kept the home's lock"
                time.sleep(0.05)
    finally:
        child.kill()
        child.wait()
