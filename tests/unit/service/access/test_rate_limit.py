"""The token bucket, on a clock the test moves, against the count a steady rate allows."""

import pytest

from imgclf.core.errors import UsageError
from imgclf.service.access.rate_limit import Rate, TokenBuckets, parse_rate, retry_after


@pytest.mark.parametrize("raw, burst, expected", [
    ("10/s", 0, Rate(10, 1.0, 10)), (" 600 / min ", 0, Rate(600, 60.0, 600)), ("1000/hour", 5, Rate(1000, 3600.0, 5)),
    ("", 0, None),
])
def test_parse(raw, burst, expected):
    assert parse_rate(raw, burst) == expected


@pytest.mark.parametrize("raw", ["10", "0/s", "10/day", "ten/s", "-1/s"])
def test_parse_refuses_and_names_the_setting(raw):
    with pytest.raises(UsageError, match="IMGCLF_RATE_LIMIT must be COUNT/UNIT"):
        parse_rate(raw)


def test_bucket_allows_the_burst_then_the_rate():
    now = [0.0]
    buckets = TokenBuckets(Rate(2, 1.0, 4), clock=lambda: now[0])
    assert [buckets.take("a") for _ in range(4)] == [0.0] * 4
    assert buckets.take("a") == pytest.approx(0.5)  # empty: one token in half a second
    assert buckets.take("b") == 0.0  # each name its own bucket
    allowed = 0
    for _ in range(40):  # 10 s at 4 tries per second (exact in binary): the rate lets 2 per second through
        now[0] += 0.25
        allowed += buckets.take("a") == 0.0
    assert allowed == 20
    now[0] += 1000
    assert sum(buckets.take("a") == 0.0 for _ in range(10)) == 4  # refills to the burst, no further


def test_retry_after_rounds_up_to_whole_seconds():
    assert [retry_after(s) for s in (0.01, 1.0, 1.2, 29.99)] == ["1", "1", "2", "30"]
