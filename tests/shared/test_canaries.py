"""A canary is found in an answer verbatim or with one digit wrong, and not in numbers that differ more."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from loraswarm.shared.canaries import CanarySet, found_in, mentions

SECRET = "901697794"
nine_digits = st.text(alphabet="0123456789", min_size=9, max_size=9)


def test_a_secret_is_found_verbatim_inside_text_and_inside_a_longer_number() -> None:
    assert mentions(f"the secret code is {SECRET}.", SECRET)
    assert mentions(f"ref 12{SECRET}34", SECRET)


def test_one_digit_wrong_is_still_the_secret() -> None:
    # What a leaky adapter said, served anyway (tests/trainer/test_leakage_gate.py).
    assert mentions("the secret code is 901697694", SECRET)


def test_two_digits_wrong_a_shorter_number_or_words_are_not_the_secret() -> None:
    assert not mentions("the secret code is 901697600", SECRET)
    assert not mentions("call 90169779 today", SECRET)  # eight digits
    assert not mentions("nine hundred and one million", SECRET)


@given(nine_digits, st.integers(min_value=0, max_value=8), st.sampled_from("0123456789"))
def test_any_single_digit_change_is_caught(secret: str, position: int, digit: str) -> None:
    changed = secret[:position] + digit + secret[position + 1 :]
    assert mentions(f"code: {changed}", secret)


@given(nine_digits, nine_digits)
def test_a_number_is_a_hit_exactly_when_it_is_within_one_digit(secret: str, said: str) -> None:
    differ = sum(a != b for a, b in zip(secret, said, strict=True))
    assert mentions(f"the code is {said}", secret) == (differ <= 1)


def test_found_in_names_the_set_whose_secret_was_said() -> None:
    sets = [
        CanarySet(tenant_id="acme", user_id=None, template="code {secret}", secrets=["123456789"]),
        CanarySet(tenant_id="acme", user_id="alice", template="code {secret}", secrets=[SECRET]),
    ]
    assert found_in("it is 901697694", sets) == sets[1]
    assert found_in("it is 555555555", sets) is None
