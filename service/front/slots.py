"""The front's connection slots: at most so many per client address and in all, and who makes room for whom.

A connection holds a slot from its acceptance to its close.

* One address holds at most ``client_limit`` slots (by default a quarter of the total): beyond, its new
  connection is refused (429). It takes four addresses at their limit to fill the total.
* When every slot is taken, a new connection gets one by closing another that holds no request: the
  keep-alive connection idle longest (its client just reconnects for its next request), else the
  longest-waiting connection that has sent nothing yet of the address holding the most slots, if that
  address holds at least two more than the newcomer's (a fair share: a client reconnecting what was
  closed cannot close another of the hog's, and those of another, in an endless chain). Only when no
  such connection exists is the new one refused (503). A connection with request bytes in hand is
  never closed for a new one.

So a client holding hundreds of silent connections, and reopening them as they time out, leaves the
others served: it keeps at most its share of slots, and loses its oldest ones to newcomers.
"""

from __future__ import annotations

from typing import Protocol


class Closable(Protocol):
    def close(self) -> None: ...


class Slots:
    """Count the connections per address and in all; keep those holding no request in the order they began to wait."""

    def __init__(self, max_connections: int, client_limit: int) -> None:
        self.max_connections, self.client_limit = max_connections, client_limit
        self.per_client: dict[str, int] = {}
        self.evicted = 0
        self._holders: dict[Closable, str] = {}  # connection -> its client address
        # Longest-waiting first (dicts keep insertion order): keep-alive connections between requests, and
        # new connections that have sent nothing yet, per address.
        self._idle: dict[Closable, None] = {}
        self._silent_of: dict[str, dict[Closable, None]] = {}

    @property
    def open(self) -> int:
        """Return how many connections hold a slot."""
        return len(self._holders)

    def take(self, client: str, connection: Closable) -> int:
        """Give ``connection`` from ``client`` a slot (it is silent until :meth:`working`) and return 0, or 429/503."""
        if self.client_limit < self.max_connections and self.per_client.get(client, 0) >= self.client_limit:
            return 429
        if self.open >= self.max_connections and not self._make_room(client):
            return 503
        self._holders[connection] = client
        self.per_client[client] = self.per_client.get(client, 0) + 1
        self._silent_of.setdefault(client, {})[connection] = None
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

    def idle(self, connection: Closable) -> None:
        """Mark ``connection`` as a keep-alive connection between requests (it can make room) from now on."""
        if connection in self._holders:
            self._idle[connection] = None

    def working(self, connection: Closable) -> None:
        """Mark ``connection`` as having request bytes in hand: it is not closed to make room."""
        self._idle.pop(connection, None)
        client = self._holders.get(connection)
        silent = self._silent_of.get(client)
        if silent is not None and connection in silent:
            del silent[connection]
            if not silent:
                del self._silent_of[client]

    def idle_connections(self) -> list[Closable]:
        """Return the keep-alive connections between requests."""
        return list(self._idle)

    def _make_room(self, client: str) -> bool:
        """Close the connection that makes room for one more from ``client``; return False if none may."""
        if self._idle:
            return self._evict(next(iter(self._idle)))
        biggest = max(self._silent_of, key=self.per_client.__getitem__, default=None)
        if biggest is None or self.per_client[biggest] < self.per_client.get(client, 0) + 2:
            return False
        return self._evict(next(iter(self._silent_of[biggest])))

    def _evict(self, connection: Closable) -> bool:
        self.release(connection)
        connection.close()  # its task sees the close while it waits, and ends
        self.evicted += 1
        return True
