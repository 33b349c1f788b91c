"""The master's check that nothing else listens on the gRPC port the workers will share."""

import socket

import pytest

from imgclf.service.server.grpc_port import check_free


def test_a_port_another_process_shares_with_so_reuseport_is_refused():
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # as a gRPC server binds it
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"127.0.0.1:{port} is taken"):
            check_free(f"127.0.0.1:{port}")
    check_free(f"127.0.0.1:{port}")  # free again once it is closed
    check_free("127.0.0.1:0")
