"""The tests' NTP responder: a real NTP server over UDP on 127.0.0.1 (random port).

One implementation serves the tests and `make run`: chargepoint.devtools.ntp_server
(configurable fake offset_s, a `queries` counter, `silent` to drop requests).
"""

from chargepoint.devtools.ntp_server import NtpServer

__all__ = ["NtpServer"]
