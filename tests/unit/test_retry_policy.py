import pytest

from shared.domain.errors import ConfigurationError, RequestRejected, SendTimeout, Throttled
from shared.service.retry import GiveUp, RetryLater, RetryPolicy


def test_full_jitter_draws_below_an_exponentially_growing_ceiling():
    ceilings = []
    policy = RetryPolicy(max_attempts=10, base_seconds=1, max_seconds=100, uniform=lambda lo, hi: ceilings.append((lo, hi)) or hi / 2)

    delays = [policy.backoff(attempt) for attempt in range(1, 9)]

    assert ceilings == [(0.0, c) for c in (1, 2, 4, 8, 16, 32, 64, 100)]
    assert delays == [0.5, 1, 2, 4, 8, 16, 32, 50]


def test_retry_after_is_a_floor_and_the_cap_still_holds():
    policy = RetryPolicy(max_attempts=5, base_seconds=1, max_seconds=60, uniform=lambda lo, hi: lo)
    assert policy.backoff(1, retry_after=20) == 20
    assert policy.backoff(1, retry_after=3600) == 60


def test_transient_errors_are_retried_until_the_last_attempt():
    policy = RetryPolicy(max_attempts=3)
    assert isinstance(policy.decide(1, Throttled("x")), RetryLater)
    assert isinstance(policy.decide(2, SendTimeout("x")), RetryLater)
    last = policy.decide(3, SendTimeout("x"))
    assert isinstance(last, GiveUp) and last.reason == "MaxAttemptsExceeded"


@pytest.mark.parametrize("error, reason", [(RequestRejected("x"), "RequestRejected"), (ConfigurationError("x"), "ConfigurationError")])
def test_permanent_and_configuration_errors_are_never_retried(error, reason):
    decision = RetryPolicy(max_attempts=5).decide(1, error)
    assert isinstance(decision, GiveUp) and decision.reason == reason


def test_a_policy_that_could_never_send_is_refused():
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
