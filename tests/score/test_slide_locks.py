"""Per-slide locks: one holder at a time, stale locks (dead pid, too old) taken over."""

import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import time

from ram_wsi.score.locks import SlideLock, pid_alive


def _hold(folder, q):
    lock = SlideLock(folder, "s1")
    q.put(lock.acquire())
    time.sleep(30)


def test_a_live_holder_keeps_the_slide(tmp_path):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_hold, args=(tmp_path, q))
    p.start()
    try:
        assert q.get(timeout=60) is True
        with SlideLock(tmp_path, "s1") as got:
            assert got is False  # another live process holds it
        assert json.loads((tmp_path / "s1.lock").read_text())["pid"] == p.pid
    finally:
        p.kill()
        p.join()
    # its process is gone: the lock is stale and taken over, then removed on exit
    with SlideLock(tmp_path, "s1") as got:
        assert got is True
        assert json.loads((tmp_path / "s1.lock").read_text())["pid"] == os.getpid()
    assert not (tmp_path / "s1.lock").exists()


def test_another_hosts_lock_holds_until_it_is_old(tmp_path):
    info = {"pid": 1, "host": socket.gethostname() + "-other", "time": time.time()}
    (tmp_path / "s2.lock").write_text(json.dumps(info))
    assert SlideLock(tmp_path, "s2").acquire() is False
    info["time"] -= 7 * 3600
    (tmp_path / "s2.lock").write_text(json.dumps(info))
    lock = SlideLock(tmp_path, "s2")
    assert lock.acquire() is True
    lock.release()


def test_unreadable_lock_is_stale_and_pid_check(tmp_path):
    (tmp_path / "s3.lock").write_text("{half")
    assert SlideLock(tmp_path, "s3").acquire() is True
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout
    assert pid_alive(os.getpid()) and not pid_alive(int(dead))
