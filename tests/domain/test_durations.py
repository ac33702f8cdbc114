from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokencli.domain.durations import DurationError, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("15m", 900),
        ("2h", 7200),
        ("7d", 604_800),
        ("1w", 604_800),
        ("1h30m", 5400),
        ("1d2h3m4s", 93_784),
        ("600", 600),
        (" 15m\n", 900),
        ("+5m", 300),
        ("0", 0),
        ("0s", 0),
    ],
)
def test_parses_documented_forms(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("-5m", "negative"),
        ("-1", "negative"),
        ("15mm", "not a duration"),
        ("m", "not a duration"),
        ("1.5h", "not a duration"),
        ("30m1h", "largest to smallest"),
        ("1h1h", "largest to smallest"),
        ("5y", "unknown unit"),
        ("1h 30m", "not a duration"),
        ("9" * 41, "too long"),
        ("15M", "not a duration"),
    ],
)
def test_refuses_bad_input_with_a_reason(text: str, fragment: str) -> None:
    with pytest.raises(DurationError, match=fragment):
        parse_duration(text)


def test_format_is_canonical() -> None:
    assert format_duration(5400) == "1h30m"
    assert format_duration(0) == "0s"
    assert format_duration(604_800 + 1) == "1w1s"
    with pytest.raises(ValueError):
        format_duration(-1)


@given(st.integers(min_value=0, max_value=10**12))
def test_format_then_parse_round_trips(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.text(max_size=60))
def test_any_text_gives_a_number_or_a_clean_error(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except DurationError as error:
        assert str(error)
    else:
        assert isinstance(seconds, int)
        assert seconds >= 0


@pytest.mark.parametrize("text", ["１５m", "١٥m", "१५", "15m\u0660", "𝟏𝟓s"])
def test_only_ascii_digits_count(text: str) -> None:
    with pytest.raises(DurationError):
        parse_duration(text)


@given(
    st.text(
        alphabet=st.characters(categories=["Nd"], exclude_characters="0123456789"),
        min_size=1,
        max_size=5,
    )
)
def test_no_unicode_digit_is_a_number_of_seconds(digits: str) -> None:
    for text in (digits, f"{digits}m", f"1h{digits}m"):
        with pytest.raises(DurationError):
            parse_duration(text)
