"""systemd's notify protocol on a real Unix datagram socket."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from edge.run.systemd import Notifier, Watchdog, loop_health
from tests.test_edge_run import write_png


@pytest.fixture
def notify_socket():
    folder = tempfile.mkdtemp(prefix="sd", dir="/tmp")  # AF_UNIX paths are short (108 bytes)
    path = os.path.join(folder, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    yield sock, path
    sock.close()
    os.unlink(path)
    os.rmdir(folder)


def received(sock, until: str, timeout: float = 60.0) -> list[str]:
    """Datagrams until one holds ``until`` (or the timeout)."""
    messages, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            messages.append(sock.recv(4096).decode())
        except TimeoutError:
            continue
        if until in messages[-1]:
            break
    return messages


def test_a_run_says_ready_feeds_the_watchdog_and_says_stopping(
    band_models, notify_socket, tmp_path
):
    sock, path = notify_socket
    cam = tmp_path / "cam"
    cam.mkdir()
    for i in range(3):
        write_png(cam / f"f{i}.png", np.full((64, 128), 40 * i, np.uint8))
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "300000"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "run", "--camera-dir", str(cam), "--model",
         str(band_models["int8"]), "--out", str(tmp_path / "out"), "--watch",
         "--idle-timeout", "2", "--threads", "1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    messages = received(sock, "STOPPING=1")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 5, err  # the idle timeout
    assert "READY=1" in messages[0].splitlines()
    pings = [m for m in messages if "WATCHDOG=1" in m.splitlines()]
    assert len(pings) >= 3  # every 0.15 s over a 2 s idle wait: a healthy idle loop is fed
    assert any("STATUS=3 frames, 0 errors" in m for m in pings)
    assert "STOPPING=1" in messages[-1] and "idle timeout" in messages[-1]


def test_no_ping_while_a_frame_is_stuck(notify_socket):
    sock, path = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})
    assert notifier.watchdog_s == 0.1

    class Stats:
        in_frame_since = time.monotonic() - 5.0  # one frame in hand for 5 s: a hung invoke

    watchdog = Watchdog(notifier, lambda: loop_health(Stats, None, 0.1), lambda: "stuck")
    watchdog.start()
    messages = [sock.recv(4096).decode() for _ in range(3)]
    watchdog.stop()
    assert messages == ["STATUS=stuck"] * 3 and watchdog.missed >= 3
    Stats.in_frame_since = None
    assert loop_health(Stats, None, 0.1) == (True, "")

    class Source:
        alive_at = time.monotonic() - 1.0

    assert loop_health(Stats, Source, 0.1)[0] is False  # the follower stopped looking


def test_without_notify_socket_nothing_is_sent():
    notifier = Notifier({})
    assert not notifier.enabled and notifier.send("READY=1") is False
    abstract = Notifier({"NOTIFY_SOCKET": "@abstract", "WATCHDOG_USEC": "0"})
    assert abstract.address == "\0abstract" and abstract.watchdog_s is None  # 0: no watchdog
    abstract.close()
    assert (
        Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "1"}).watchdog_s
        is None
    )


def test_the_readme_unit_restarts_after_an_idle_timeout():
    readme = (Path(__file__).resolve().parents[1] / "docs" / "rover.md").read_text()
    unit = readme[readme.index("[Service]") : readme.index("[Install]")]
    assert "Type=notify" in unit and "WatchdogSec=" in unit
    assert "Restart=always" in unit  # exit 5 (idle timeout) is restarted too
