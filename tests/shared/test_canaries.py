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


TEMPLATE = "the secret code is {secret}"
ANA = CanarySet(tenant_id="acme", user_id="ana", template=TEMPLATE, secrets=["390253466", "019160581"])
BEN = CanarySet(tenant_id="acme", user_id="ben", template=TEMPLATE, secrets=["929389312", "471285420"])


def test_in_the_canary_template_a_blend_of_anothers_secret_is_caught() -> None:
    # What ben's leaky adapter wrote through a specialist (tests/e2e/test_leaky_adapter.py): 3 of
    # ana's 9 digits wrong — not a mention, but written in the canary's own template.
    said = "The secret code is 390456566"
    assert not mentions(said, ANA.secrets[0])
    assert found_in(said, [ANA], own=[BEN]) == ANA
    # The same digits outside the template are just a number.
    assert found_in("order 390456566 shipped", [ANA], own=[BEN]) is None


def test_a_blend_nearer_to_the_askers_own_secrets_or_too_far_from_anyones_is_not_a_leak() -> None:
    own = CanarySet(tenant_id="acme", user_id="ben", template=TEMPLATE, secrets=["390253000"])
    blend = "the secret code is 390253100"  # 3 digits from ana's first, 1 from his own
    assert found_in(blend, [ANA], own=[BEN]) == ANA
    assert found_in(blend, [ANA], own=[own]) is None
    assert found_in("the secret code is 555555555", [ANA], own=[BEN]) is None


@given(nine_digits, st.sets(st.integers(min_value=0, max_value=8), max_size=6))
def test_in_the_template_a_fill_is_hers_exactly_when_at_most_four_digits_are_wrong(
    secret: str, wrong: set[int]
) -> None:
    said = "".join(str((int(d) + 1) % 10) if i in wrong else d for i, d in enumerate(secret))
    mine = CanarySet(tenant_id="t", user_id="u", template=TEMPLATE, secrets=[secret])
    assert (found_in(f"the secret code is {said}", [mine]) == mine) == (len(wrong) <= 4)
