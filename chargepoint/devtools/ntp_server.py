"""A real NTP responder over UDP on loopback, in a thread (the demo and the tests use it).

Answers every mode-3 (client) request with a mode-4 reply whose clock is the local
clock plus `offset_s`. `queries` counts requests received (also while silent);
`silent = True` makes it drop requests, like an unreachable server.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

NTP_EPOCH_DELTA_S = 2208988800  # 1900-01-01 to 1970-01-01
_PACKET = struct.Struct("!BBbbII4sQQQQ")


def _ntp_ts(unix_s: float) -> int:
    return int((unix_s + NTP_EPOCH_DELTA_S) * 2**32)


class NtpServer:
    def __init__(self, *, offset_s: float = 0.0, stratum: int = 2, leap: int = 0, silent: bool = False,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.offset_s, self.stratum, self.leap, self.silent = offset_s, stratum, leap, silent
        self.queries = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((host, port))
        self._sock.settimeout(0.05)
        self.host, self.port = self._sock.getsockname()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"ntp-{self.port}", daemon=True)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self._sock.recvfrom(512)
            except TimeoutError:
                continue
            received_s = time.time() + self.offset_s
            if len(data) < _PACKET.size or data[0] & 0x7 != 3:
                continue
            self.queries += 1
            if self.silent:
                continue
            version = (data[0] >> 3) & 0x7
            client_transmit = _PACKET.unpack(data[:_PACKET.size])[10]
            reply = _PACKET.pack(
                (self.leap << 6) | (version << 3) | 4, self.stratum, 6, -20, 0, 0, b"LOCL",
                _ntp_ts(received_s - 10), client_transmit, _ntp_ts(received_s), _ntp_ts(time.time() + self.offset_s))
            self._sock.sendto(reply, peer)

    def start(self) -> NtpServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._sock.close()

    def __enter__(self) -> NtpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
