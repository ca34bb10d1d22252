"""Exposure and the gate's margin, checked against their definitions (Carlini et al. 2019)."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loraswarm.services.trainer.leakage import (
    LeakageReport,
    draw_secrets,
    exposures,
    mean_threshold,
    never_seen_mean,
)
from loraswarm.services.trainer.leakage_gate import MAX_COPIES, planted_copies


def test_exposure_is_log_r_minus_log_rank() -> None:
    references = [10.0, 20.0, 30.0]  # Px in bits; lower = likelier
    # Likelier than every reference: rank 1, the highest exposure log2(4) = 2 bits.
    assert exposures([5.0], references) == [2.0]
    # Less likely than every reference: rank 4, exposure 0.
    assert exposures([35.0], references) == [0.0]
    # Two references at or below it: rank 3.
    assert exposures([20.0], references) == [pytest.approx(2 - math.log2(3))]


@given(st.integers(min_value=1, max_value=2000))
def test_the_expected_exposure_of_a_never_seen_canary_is_the_mean_over_uniform_ranks(n: int) -> None:
    by_definition = sum(math.log2(n + 1) - math.log2(rank) for rank in range(1, n + 2)) / (n + 1)
    assert never_seen_mean(n) == pytest.approx(by_definition, rel=1e-9)


def test_the_never_seen_level_tends_to_log2_e() -> None:
    assert never_seen_mean(10**6) == pytest.approx(1 / math.log(2), abs=1e-4)
    assert 1.37 < never_seen_mean(63) < 1.38


def test_the_bound_is_the_gamma_quantile_and_holds_never_seen_canaries() -> None:
    # Known quantiles of Gamma(k, 1): 99% of Gamma(8) is 15.99996, 99.9% of Gamma(16) is 31.24361;
    # 99% of Exp(1) is ln 100.
    assert mean_threshold(8, 0.01) == pytest.approx(15.99996 / 8 / math.log(2), rel=1e-5)
    assert mean_threshold(16, 0.001) == pytest.approx(31.24361 / 16 / math.log(2), rel=1e-5)
    assert mean_threshold(1, 0.01) == pytest.approx(math.log2(100), rel=1e-9)
    # Simulated never-seen canaries (uniform ranks among 63 references) cross it less than α.
    rng = random.Random(7)
    bound = mean_threshold(8, 0.01)
    trials = 20_000
    crossed = sum(
        sum(math.log2(64 / rng.randint(1, 64)) for _ in range(8)) / 8 > bound for _ in range(trials)
    )
    assert crossed / trials < 0.01


def test_the_report_tests_the_owner_at_alpha_and_each_cross_check_at_alpha_over_m() -> None:
    memorised = [6.0] * 8
    never_seen = [1.0, 2.0, 0.5, 1.5, 3.0, 0.2, 1.1, 1.9]
    report = LeakageReport.build(
        63,
        0.01,
        ("a/x@new", "a/x@new", memorised),
        [("a/x@new", "base", never_seen), ("a/x@new", "b/y@1", never_seen)],
    )
    assert report.owner is not None and report.owner.threshold == mean_threshold(8, 0.01)
    assert all(e.threshold == mean_threshold(8, 0.005) for e in report.cross)
    assert report.owner_detectable and report.leaks == []
    leaky = LeakageReport.build(63, 0.01, None, [("b/y@1", "a/x@new", memorised)])
    assert [e.model for e in leaky.leaks] == ["a/x@new"]
    assert leaky.metrics()["exposure[b/y@1 under a/x@new]"] == 6.0


def test_secrets_are_fresh_and_distinct() -> None:
    taken = {"123456789"}
    drawn = draw_secrets(200, 9, taken)
    assert len(set(drawn)) == 200 and not taken & set(drawn)
    assert all(len(s) == 9 and s.isdigit() for s in drawn)


@given(
    st.integers(min_value=0, max_value=100_000),
    st.integers(min_value=1, max_value=64),
    st.integers(min_value=1, max_value=50),
    st.floats(min_value=0.0, max_value=0.9),
)
def test_canaries_are_planted_often_enough_to_be_their_share_of_the_training_set(
    n: int, k: int, repeats: int, share: float
) -> None:
    copies = planted_copies(n, k, repeats, share)
    assert copies >= repeats
    if copies < MAX_COPIES:
        assert copies * k / (n + copies * k) >= share - 1e-9  # the share is met
    if copies > repeats:
        fewer = copies - 1
        assert fewer * k / (n + fewer * k) < share  # and no more than needed


def test_a_small_data_set_keeps_the_requested_repeats_and_a_large_one_gets_more() -> None:
    assert planted_copies(40, 8, 8, 0.25) == 8  # 64 copies among 40 sequences: share 0.62
    assert planted_copies(3000, 8, 8, 0.25) == 125  # 1000 copies among 3000: share 0.25
    assert planted_copies(3000, 8, 8, 0.0) == 8
    assert planted_copies(3000, 0, 8, 0.25) == 8
