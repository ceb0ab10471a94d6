"""The SCP's listening socket, with the TLS handshake done in each association's own thread.

pynetdicom's server does the handshake in its accept loop, with no time limit: one client that
connects and sends nothing (a modality that lost power mid-handshake, a monitoring probe that
holds the port open) stopped every further TLS association, the scanner's images included, for as
long as it stayed connected. Here the accept loop only accepts; the handshake runs beside the
association it opens, and gives up after TLS_HANDSHAKE_S.
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any

from pynetdicom.transport import ThreadedAssociationServer

log = logging.getLogger("aspects.node")

TLS_HANDSHAKE_S = 10.0


class HandshakeInItsThread(ThreadedAssociationServer):
    """`ssl_context` may be replaced while serving (renewed certificates): each handshake reads it."""

    def get_request(self) -> tuple[socket.socket, Any]:
        assert self.socket is not None
        return self.socket.accept()

    def process_request_thread(self, request, client_address) -> None:
        context = self.ssl_context
        if context is not None:
            try:
                request.settimeout(TLS_HANDSHAKE_S)
                request = context.wrap_socket(request, server_side=True)
                request.settimeout(None)            # as pynetdicom leaves an accepted socket
            except OSError as exc:                  # ssl.SSLError and socket timeouts included
                log.info("TLS handshake with %s failed: %s", client_address, exc)
                self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)


def start_server(ae, address: tuple[str, int], ssl_context, handlers: list) -> HandshakeInItsThread:
    """A listening SCP serving in a thread of its own, as pynetdicom's AE.start_server(block=False)."""
    server = ae.make_server(address, ssl_context=ssl_context, evt_handlers=handlers,
                            server_class=HandshakeInItsThread)
    threading.Thread(target=server.serve_forever, daemon=True, name=f"aspects-scp-{address[1]}").start()
    ae._servers.append(server)          # as start_server does: the server's shutdown() takes itself out
    return server
