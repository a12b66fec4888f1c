"""systemd's service protocol: READY, a watchdog that only a healthy loop feeds, STATUS, STOPPING.

Under a unit with ``Type=notify`` systemd passes ``NOTIFY_SOCKET`` (a Unix datagram socket; a
leading ``@`` is the abstract namespace) and, with ``WatchdogSec=``, ``WATCHDOG_USEC``. The run
sends ``READY=1`` once the model is loaded and the outputs are open, ``STATUS=`` with the latest
figures, ``STOPPING=1`` on the way out, and ``WATCHDOG=1`` at half the watchdog period, from a
thread that checks the loop's health first: the frame in hand is not older than the period
(a hung invoke or a blocked disk stops the pings) and the camera folder's follower has looked
for news within it. systemd then kills and restarts a stuck run. Without ``NOTIFY_SOCKET``
nothing is sent. The protocol is a few datagrams: no library is needed.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify datagrams to ``NOTIFY_SOCKET`` (nothing when it is unset).

    Args:
        environ: where to read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``.
    """

    def __init__(self, environ: Mapping[str, str] | None = None):
        environ = os.environ if environ is None else environ
        address = environ.get("NOTIFY_SOCKET") or None
        if address and address.startswith("@"):
            address = "\0" + address[1:]
        self.address = address
        self._socket = None
        if self.address:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        usec = environ.get("WATCHDOG_USEC")
        pid = environ.get("WATCHDOG_PID")
        mine = pid is None or pid == str(os.getpid())
        valid = bool(usec) and usec.isdigit() and int(usec) > 0
        self.watchdog_s = int(usec) / 1e6 if valid and mine else None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def send(self, *fields: str) -> bool:
        """One datagram of ``KEY=value`` lines; False (logged once) when it cannot be sent."""
        if self._socket is None:
            return False
        try:
            self._socket.sendto("\n".join(fields).encode(), self.address)
            return True
        except OSError as err:
            if not self._warned:
                log.warning("cannot notify systemd at %s: %s", self.address, err)
                self._warned = True
            return False

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


class Watchdog:
    """Feeds systemd's watchdog from a thread while ``healthy()`` says so.

    Args:
        notifier: the socket.
        healthy: returns ``(ok, why)``; no ping while not ok (``why`` is logged once).
        status: returns the ``STATUS=`` text sent with each ping.
        every_s: the period (half of ``WATCHDOG_USEC``; with no watchdog, only the status is
            refreshed, every 5 s).
    """

    def __init__(self, notifier: Notifier, healthy: Callable[[], tuple[bool, str]],
                 status: Callable[[], str], every_s: float | None = None):  # fmt: skip
        self.notifier = notifier
        self.healthy = healthy
        self.status = status
        self.watchdog = notifier.watchdog_s is not None
        self.every_s = every_s or (notifier.watchdog_s / 2 if self.watchdog else 5.0)
        self.missed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sd-watchdog", daemon=True)

    def start(self) -> Watchdog:
        if self.notifier.enabled:
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            ok, why = self.healthy()
            fields = [f"STATUS={self.status()}"]
            if self.watchdog and ok:
                fields.insert(0, "WATCHDOG=1")
            elif self.watchdog:
                self.missed += 1
                if self.missed == 1:
                    log.warning("not feeding systemd's watchdog: %s", why)
            self.notifier.send(*fields)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.every_s + 1)


def loop_health(stats, source, limit_s: float) -> tuple[bool, str]:
    """Whether the frame loop is making progress: the frame in hand (``stats.in_frame_since``,
    monotonic) is younger than ``limit_s``, and the source (``alive_at``, if it keeps one)
    looked for frames within it."""
    now = time.monotonic()
    started = getattr(stats, "in_frame_since", None)
    if started is not None and now - started > limit_s:
        return False, f"one frame has been in hand for {now - started:.1f} s"
    alive = getattr(source, "alive_at", None)
    if alive is not None and now - alive > limit_s:
        return False, f"the camera folder has not been looked at for {now - alive:.1f} s"
    return True, ""
