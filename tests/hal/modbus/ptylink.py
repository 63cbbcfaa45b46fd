"""A null-modem cable in pure Python: two pseudo-terminals joined by a relay thread.

The Modbus RTU client opens `client_device`, the server `server_device`; the
thread copies bytes between the two pty masters and can corrupt the answers
to chosen requests (a bad CRC on the line).
"""

from __future__ import annotations

import os
import select
import threading
import tty


class PtyLink:
    def __init__(self) -> None:
        self._client_master, self._client_slave = os.openpty()
        self._server_master, self._server_slave = os.openpty()
        # Raw before anyone opens the slaves: a cooked pty would echo the frames back.
        tty.setraw(self._client_slave)
        tty.setraw(self._server_slave)
        self.client_device = os.ttyname(self._client_slave)
        self.server_device = os.ttyname(self._server_slave)
        self._lock = threading.Lock()
        self._corrupt_requests = 0   # answers to this many upcoming requests get a flipped byte
        self._corrupting = False
        self.corrupted_chunks = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._relay, name="pty-link", daemon=True)
        self._thread.start()

    def corrupt_next_answers(self, count: int) -> None:
        with self._lock:
            self._corrupt_requests = count

    def _relay(self) -> None:
        masters = [self._client_master, self._server_master]
        while not self._stop.is_set():
            try:
                readable, _, _ = select.select(masters, [], [], 0.05)
            except (OSError, ValueError):
                return
            for fd in readable:
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    continue  # EIO while the other side has the slave closed
                if fd == self._client_master:
                    with self._lock:
                        self._corrupting = self._corrupt_requests > 0
                        if self._corrupting:
                            self._corrupt_requests -= 1
                    os.write(self._server_master, data)
                else:
                    if self._corrupting and data:
                        data = data[:-1] + bytes([data[-1] ^ 0xFF])
                        self.corrupted_chunks += 1
                    os.write(self._client_master, data)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for fd in (self._client_master, self._client_slave, self._server_master, self._server_slave):
            try:
                os.close(fd)
            except OSError:
                pass
