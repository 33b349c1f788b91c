"""The gRPC port, checked by gunicorn's master before any worker binds it.

Every worker binds ``IMGCLF_GRPC_BIND`` with ``SO_REUSEPORT`` (the workers
share it; :mod:`imgclf.service.protocols.grpc.server`), and so could any other
process that sets the option: a second server started on the same port would
silently take half the connections. The master, which holds no gRPC object,
binds the address once without the option first: that fails while anything
listens there. Standard library only.
"""

from __future__ import annotations

import socket


def check_free(address: str) -> None:
    """Raise RuntimeError if something already listens on ``address`` (HOST:PORT; port 0 is always free)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if int(port) == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart's TIME_WAIT connections are fine
        try:
            probe.bind((host, int(port)))
        except OSError as exc:
            raise RuntimeError(f"the gRPC address {address} is taken ({exc.strerror}): another server listens "
                               f"there; set IMGCLF_GRPC_BIND (--grpc-bind) to a free port") from None
