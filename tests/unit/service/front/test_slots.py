"""The front's connection slots: limits per address and in all, and which connection makes room for a new one."""

from __future__ import annotations

import pytest

from imgclf.service.front.slots import Slots


class Conn:
    def __init__(self, name: str) -> None:
        self.name, self.closed = name, False

    def close(self) -> None:
        self.closed = True

    def __repr__(self) -> str:
        return self.name


def test_the_biggest_holders_longest_silent_connection_makes_room():
    slots = Slots(max_connections=5, client_limit=4)
    hog = [Conn(f"h{i}") for i in range(4)]
    other = Conn("o")
    assert [slots.take("6.6.6.6", c) for c in hog] + [slots.take("1.1.1.1", other)] == [0] * 5
    slots.working(hog[0])  # h0 has request bytes in hand: never closed for a newcomer
    newcomer = Conn("n")
    assert slots.take("2.2.2.2", newcomer) == 0 and [c.name for c in hog + [other] if c.closed] == ["h1"]
    slots.release(hog[1])  # h1's task ends later: its slot was freed already, nothing is counted twice
    assert slots.open == 5 and slots.per_client == {"6.6.6.6": 3, "1.1.1.1": 1, "2.2.2.2": 1}
    assert slots.take("3.3.3.3", Conn("m")) == 0 and hog[2].closed and not other.closed and slots.evicted == 2


def test_a_client_reconnecting_what_was_closed_cannot_close_another_in_a_chain():
    slots = Slots(max_connections=4, client_limit=2)
    a, b = [Conn("a1"), Conn("a2")], [Conn("b1"), Conn("b2")]
    for conn in a + b:
        assert slots.take(conn.name[0], conn) == 0
    slots.release(a[0])  # a1 ends; "a" reconnects at once: the total is not full, it gets a slot
    again = Conn("a3")
    assert slots.take("a", again) == 0
    assert slots.take("a", Conn("a4")) == 429  # at its own limit
    slots.release(b[0])
    assert slots.take("b", Conn("b3")) == 0
    # full, two addresses with two each: a third client closes one, but neither of them may close the other's
    assert slots.take("c", Conn("c1")) == 0 and slots.evicted == 1
    closed = next(c for c in (a[1], again, b[1]) if c.closed)
    assert slots.take(closed.name[0], Conn("x")) == 503 and slots.evicted == 1


def test_an_idle_keep_alive_connection_makes_room_first_even_for_its_own_address():
    slots = Slots(max_connections=2, client_limit=2)
    first, second = Conn("1"), Conn("2")
    slots.take("1.1.1.1", first)
    slots.take("1.1.1.1", second)
    slots.working(first)
    slots.working(second)
    assert slots.take("1.1.1.1", Conn("3")) == 503  # every connection has a request in hand
    slots.idle(second)  # answered; now between requests
    assert slots.idle_connections() == [second] and slots.take("1.1.1.1", Conn("4")) == 0 and second.closed


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0), (1, 0, 2)])
def test_slots_are_all_given_back(order):
    slots = Slots(max_connections=3, client_limit=3)
    conns = [Conn(str(i)) for i in range(3)]
    for conn in conns:
        slots.take("1.1.1.1", conn)
    slots.working(conns[0])
    slots.idle(conns[0])
    for i in order:
        slots.release(conns[i])
    assert slots.open == 0 and slots.per_client == {} and slots.idle_connections() == [] and slots._silent_of == {}
