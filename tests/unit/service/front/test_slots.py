"""The front's connection slots: limits per address and in all, and the longest-waiting connection making room."""

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


def test_the_longest_waiting_connection_makes_room_and_one_with_a_request_never_does():
    slots = Slots(max_connections=3, client_limit=3)
    a, b, c = Conn("a"), Conn("b"), Conn("c")
    assert [slots.take("1.1.1.1", x) for x in (a, b, c)] == [0, 0, 0]
    slots.working(a)  # a has request bytes in hand
    d = Conn("d")
    assert slots.take("2.2.2.2", d) == 0 and [x.closed for x in (a, b, c)] == [False, True, False]
    slots.release(b)  # b's task ends later: its slot was freed already, nothing is counted twice
    assert slots.open == 3 and slots.per_client == {"1.1.1.1": 2, "2.2.2.2": 1} and slots.evicted == 1
    slots.working(c)
    slots.working(d)
    assert slots.take("3.3.3.3", Conn("e")) == 503 and slots.open == 3  # everyone has a request in hand
    slots.waiting(a, idle=True)  # a answered, idle between keep-alive requests: it waits again
    assert slots.idle() == [a] and slots.take("3.3.3.3", Conn("f")) == 0 and a.closed


def test_an_address_at_its_limit_makes_room_among_its_own_connections_only():
    slots = Slots(max_connections=10, client_limit=2)
    mine, other = [Conn("m1"), Conn("m2")], Conn("o")
    assert slots.take("9.9.9.9", other) == 0
    assert [slots.take("1.1.1.1", x) for x in mine] == [0, 0]
    third = Conn("m3")
    assert slots.take("1.1.1.1", third) == 0 and mine[0].closed and not other.closed and not mine[1].closed
    slots.working(mine[1])
    slots.working(third)
    assert slots.take("1.1.1.1", Conn("m4")) == 429 and slots.per_client == {"9.9.9.9": 1, "1.1.1.1": 2}


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0), (1, 0, 2)])
def test_slots_are_all_given_back(order):
    slots = Slots(max_connections=2, client_limit=2)
    conns = [Conn(str(i)) for i in range(3)]
    for conn in conns:
        slots.take("1.1.1.1", conn)
    for i in order:
        slots.release(conns[i])
    assert slots.open == 0 and slots.per_client == {} and slots.idle() == [] and slots._waiting_of == {}
