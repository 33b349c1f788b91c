"""The front's connection slots: at most so many in all and per client address, and who makes room for whom.

A connection holds a slot from its acceptance to its close. When a new one would pass a limit (its
address's, ``client_limit``, or the total, ``max_connections``), the connection that has waited longest
without a request is closed to make room: a new one that has sent nothing yet, or a keep-alive one
between requests (of the same address when the address is at its limit, of any address when the total
is). Only when none waits is the new connection refused (429 at the address's limit, 503 at the total).
So a client holding hundreds of silent connections open, and reopening them as they time out, cannot
lock the others out: it loses its own oldest ones first, and a connection with a request in hand is never
closed for a new one.
"""

from __future__ import annotations

from typing import Protocol


class Closable(Protocol):
    def close(self) -> None: ...


class Slots:
    """Count the connections per address and in all; keep the waiting ones in the order they began to wait."""

    def __init__(self, max_connections: int, client_limit: int) -> None:
        self.max_connections, self.client_limit = max_connections, client_limit
        self.per_client: dict[str, int] = {}
        self.evicted = 0
        self._holders: dict[Closable, str] = {}  # connection -> its client address
        # Waiting connections, longest-waiting first (dicts keep insertion order): in all, and per address.
        # The value says whether it is a keep-alive connection between requests (else: new, nothing sent).
        self._waiting: dict[Closable, bool] = {}
        self._waiting_of: dict[str, dict[Closable, None]] = {}

    @property
    def open(self) -> int:
        """Return how many connections hold a slot."""
        return len(self._holders)

    def take(self, client: str, connection: Closable) -> int:
        """Give ``connection`` from ``client`` a slot (it starts waiting) and return 0, or the refusal's status."""
        at_limit = self.client_limit < self.max_connections and self.per_client.get(client, 0) >= self.client_limit
        if at_limit and not self._evict(self._waiting_of.get(client)):
            return 429
        if self.open >= self.max_connections and not self._evict(self._waiting):
            return 503
        self._holders[connection] = client
        self.per_client[client] = self.per_client.get(client, 0) + 1
        self.waiting(connection, idle=False)
        return 0

    def release(self, connection: Closable) -> None:
        """Free the slot of ``connection`` (it closed, or was closed to make room: then its slot is free already)."""
        if connection not in self._holders:
            return
        self.working(connection)
        client = self._holders.pop(connection)
        self.per_client[client] -= 1
        if not self.per_client[client]:
            del self.per_client[client]

    def waiting(self, connection: Closable, idle: bool) -> None:
        """Mark ``connection`` as holding no request (``idle``: between keep-alive requests) from now on."""
        client = self._holders.get(connection)
        if client is not None:
            self._waiting[connection] = idle
            self._waiting_of.setdefault(client, {})[connection] = None

    def working(self, connection: Closable) -> None:
        """Mark ``connection`` as having request bytes in hand: it is not closed to make room."""
        if self._waiting.pop(connection, None) is not None:
            client = self._holders[connection]
            of_client = self._waiting_of[client]
            del of_client[connection]
            if not of_client:
                del self._waiting_of[client]

    def idle(self) -> list[Closable]:
        """Return the keep-alive connections between requests."""
        return [connection for connection, idle in self._waiting.items() if idle]

    def _evict(self, waiting: dict | None) -> bool:
        """Close the longest-waiting connection of ``waiting`` and free its slot; return False if there is none."""
        if not waiting:
            return False
        oldest = next(iter(waiting))
        self.release(oldest)
        oldest.close()  # its task sees the close while it waits, and ends
        self.evicted += 1
        return True
