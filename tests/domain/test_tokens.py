from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokencli.domain import tokens


def test_generated_token_has_the_documented_shape() -> None:
    new = tokens.generate()
    token_id, secret = new.plaintext.split(":")
    assert token_id == new.id
    assert tokens.is_token_id(token_id)
    assert len(secret) == 30
    assert set(new.plaintext) <= set(string.ascii_letters + string.digits + "-_:")
    assert tokens.parse(new.plaintext) == new.id
    assert tokens.matches(new.plaintext, new.secret_hash)


def test_tokens_are_unique_and_random() -> None:
    made = [tokens.generate() for _ in range(2000)]
    assert len({new.id for new in made}) == 2000
    assert len({new.plaintext for new in made}) == 2000


def test_hash_is_sha256_of_the_token_not_the_token() -> None:
    new = tokens.generate()
    assert len(new.secret_hash) == 32
    assert new.plaintext.encode() not in new.secret_hash
    assert not tokens.matches(tokens.generate().plaintext, new.secret_hash)


def test_surrounding_whitespace_is_not_part_of_the_token() -> None:
    new = tokens.generate()
    assert tokens.parse(f"  {new.plaintext}\n") == new.id
    assert tokens.matches(f"{new.plaintext}\n", new.secret_hash)


def test_every_one_character_typo_is_malformed() -> None:
    plaintext = tokens.generate().plaintext
    alphabet = string.ascii_letters + string.digits + "-_"
    for position, original in enumerate(plaintext):
        if original == ":":
            continue
        for replacement in alphabet[::7]:
            if replacement == original:
                continue
            typo = plaintext[:position] + replacement + plaintext[position + 1 :]
            with pytest.raises(tokens.MalformedTokenError):
                tokens.parse(typo)


@pytest.mark.parametrize("cut", [1, 5, 20])
def test_truncated_or_extended_token_is_malformed(cut: int) -> None:
    plaintext = tokens.generate().plaintext
    with pytest.raises(tokens.MalformedTokenError):
        tokens.parse(plaintext[:-cut])
    with pytest.raises(tokens.MalformedTokenError):
        tokens.parse(plaintext + "A" * cut)


@given(st.text(max_size=200))
def test_any_text_parses_or_is_cleanly_malformed(text: str) -> None:
    try:
        token_id = tokens.parse(text)
    except tokens.MalformedTokenError as error:
        assert str(error).startswith("not a tokencli token")
    else:
        assert tokens.is_token_id(token_id)


@given(st.binary(max_size=100))
def test_bytes_decoded_loosely_never_crash_the_parser(raw: bytes) -> None:
    text = raw.decode("utf-8", errors="surrogateescape")
    with pytest.raises(tokens.MalformedTokenError):
        tokens.parse(text)


@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=60))
def test_checksum_is_url_safe_base64_of_the_crc32(prefix: str) -> None:
    # The documented rule (docs/design.md, token format), computed the plain way.
    import base64
    import zlib

    crc = zlib.crc32(prefix.encode("ascii")).to_bytes(4, "big")
    assert tokens._checksum(prefix) == base64.urlsafe_b64encode(crc).decode("ascii")[:6]


@given(st.binary(min_size=8, max_size=8))
def test_an_id_is_the_first_twelve_letters_of_the_base32_of_its_bytes(raw: bytes) -> None:
    import base64

    expected = base64.b32encode(raw).decode("ascii")[: tokens.ID_LENGTH].lower()
    assert tokens.id_from_bytes(raw) == expected
    assert tokens.is_token_id(expected)
