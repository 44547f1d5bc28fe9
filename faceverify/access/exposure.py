"""Nothing listens beyond this machine without a login: a server bound to a host other than the
loopback, or opened through a public tunnel, needs one, or an explicit `--insecure`."""
from __future__ import annotations

import ipaddress

from ..errors import ExposureError


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and "localhost": reachable from this machine only."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def check_exposure(host: str, share: bool = False, login: bool = False, insecure: bool = False) -> None:
    """Raise `ExposureError` when a server would be reachable from other machines (a host that is
    not the loopback, or `share`: a public tunnel) with no login and no explicit `insecure`."""
    if login or insecure or (is_loopback(host) and not share):
        return
    where = "through a public share link" if share else f"on {host}"
    raise ExposureError(f"refusing to serve a gallery of faces {where} without a login: give --auth-file FILE "
                        "(users added with `faceverify users add NAME --auth-file FILE`), or --insecure "
                        "if something else in front of it checks who connects")
