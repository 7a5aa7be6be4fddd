"""The login throttle: attempts that have not succeeded are limited per key and forgotten in time."""

from gentoo_farm.passwords import LoginThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_attempts_beyond_the_limit_are_refused_until_the_window_has_passed() -> None:
    clock = Clock()
    throttle = LoginThrottle(limit=3, window=60, clock=clock)
    assert [throttle.attempt(("admin", "192.0.2.1")) for _ in range(4)] == [True, True, True, False]
    # Another address, or another user, has its own count.
    assert throttle.attempt(("admin", "192.0.2.2"))
    assert throttle.attempt(("viewer", "192.0.2.1"))
    clock.now += 61
    assert throttle.attempt(("admin", "192.0.2.1"))


def test_a_successful_login_forgets_the_failures_before_it() -> None:
    throttle = LoginThrottle(limit=2, window=60, clock=Clock())
    assert throttle.attempt("admin") and throttle.attempt("admin")
    throttle.succeeded("admin")
    assert throttle.attempt("admin") and throttle.attempt("admin")
    assert not throttle.attempt("admin")
