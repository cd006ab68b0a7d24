"""RetryPolicy: Celery's publish retry options, as pure data."""

from __future__ import annotations

import itertools

import pytest

from amqptasks.publish.retry import NO_RETRY, RetryPolicy, from_options


def test_default_policy_is_celerys_three_retries_after_0_then_200ms_waits() -> None:
    # Given Celery's defaults (max_retries 3, interval_start 0, interval_step 0.2, interval_max 0.2)
    policy = RetryPolicy()

    # When we list the sleeps before each retry
    sleeps = list(policy.intervals())

    # Then there are three, growing by the step up to the maximum
    assert sleeps == [0.0, 0.2, 0.2]
    assert policy.total_sleep() == pytest.approx(0.4)


def test_intervals_grow_by_step_and_stop_at_interval_max() -> None:
    policy = RetryPolicy(max_retries=6, interval_start=1.0, interval_step=0.5, interval_max=2.5)

    assert list(policy.intervals()) == [1.0, 1.5, 2.0, 2.5, 2.5, 2.5]


def test_zero_max_retries_means_no_sleep_and_no_retry() -> None:
    assert list(RetryPolicy(max_retries=0).intervals()) == []
    assert list(NO_RETRY.intervals()) == []


def test_none_max_retries_retries_forever() -> None:
    policy = RetryPolicy(max_retries=None, interval_start=0.1, interval_step=0.1, interval_max=0.3)

    first = list(itertools.islice(policy.intervals(), 100))

    assert len(first) == 100
    assert first[:4] == pytest.approx([0.1, 0.2, 0.3, 0.3])
    assert policy.total_sleep() == float("inf")


def test_each_call_to_intervals_starts_afresh() -> None:
    policy = RetryPolicy()
    used = policy.intervals()
    next(used)

    assert list(policy.intervals()) == [0.0, 0.2, 0.2]


def test_policy_is_frozen() -> None:
    policy = RetryPolicy()
    with pytest.raises(AttributeError):
        policy.max_retries = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_retries": -1}, "max_retries must be an integer >= 0 or None, not -1"),
        ({"max_retries": 2.5}, "max_retries must be an integer >= 0 or None, not 2.5"),
        ({"max_retries": True}, "max_retries must be an integer >= 0 or None, not True"),
        ({"interval_start": -0.1}, "interval_start must be a number of seconds >= 0, not -0.1"),
        ({"interval_step": "1"}, "interval_step must be a number of seconds >= 0, not '1'"),
        ({"interval_max": float("nan")}, "interval_max must be a number of seconds >= 0, not nan"),
    ],
)
def test_invalid_values_are_rejected_naming_the_option(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        RetryPolicy(**options)  # type: ignore[arg-type]


def test_from_options_fills_missing_keys_with_defaults() -> None:
    # Given a Celery-style retry_policy naming only some keys
    policy = from_options(True, {"max_retries": 5, "interval_max": 1})

    # Then the others keep Celery's defaults
    assert policy == RetryPolicy(max_retries=5, interval_start=0.0, interval_step=0.2, interval_max=1)


def test_from_options_without_a_policy_is_the_default() -> None:
    assert from_options() == RetryPolicy()
    assert from_options(True, None) == RetryPolicy()
    assert from_options(True, {}) == RetryPolicy()


def test_retry_false_disables_retries_whatever_the_policy_says() -> None:
    policy = from_options(False, {"max_retries": 10, "interval_start": 2})

    assert policy.max_retries == 0
    assert list(policy.intervals()) == []


def test_unknown_key_is_rejected_with_a_suggestion_and_the_known_keys() -> None:
    # Given a typo in a policy key
    with pytest.raises(ValueError) as caught:
        from_options(True, {"max_retry": 3})

    # Then the error names it, suggests the right key and lists the known ones
    message = str(caught.value)
    assert "unknown key 'max_retry'" in message
    assert "did you mean 'max_retries'?" in message
    assert "known keys: max_retries, interval_start, interval_step, interval_max" in message


def test_several_unknown_keys_are_all_named() -> None:
    with pytest.raises(ValueError, match=r"unknown keys 'retry_errors', 'intervall_max' \(did you mean 'interval_max'"):
        from_options(True, {"retry_errors": (), "intervall_max": 1})


def test_retry_flag_must_be_a_bool() -> None:
    with pytest.raises(ValueError, match="retry must be True or False"):
        from_options("yes", None)  # type: ignore[arg-type]


def test_yaml_publish_retry_sets_the_window_and_a_calls_retry_policy_wins() -> None:
    # Given a YAML that widens the publish retry window
    from amqptasks.app import _retry_policy
    from amqptasks.config import load_config_text

    config = load_config_text("broker:\n  publish_retry: {max_retries: 10, interval_max: 1}\n", "app.yaml")

    # When a call gives no policy, or its own max_retries
    default, own = _retry_policy({}, config), _retry_policy({"retry_policy": {"max_retries": 1}}, config)

    # Then the YAML's window applies, and the call's keys win over it
    assert (default.max_retries, default.interval_max, default.interval_step) == (10, 1.0, 0.2)
    assert (own.max_retries, own.interval_max) == (1, 1.0)


def test_gave_up_says_the_message_may_still_have_been_delivered() -> None:
    from amqptasks.broker.retry import gave_up

    error = gave_up("task t[1]", "connection refused", 3)
    assert "may still have been delivered" in str(error) and "broker.publish_retry" in str(error)


def test_publish_many_and_every_publisher_of_the_app_use_the_yaml_window() -> None:
    # Given a YAML window of 2 quick retries and a broker that refuses connections (nothing listens there)
    from amqptasks import App
    from amqptasks.config import load_config_text
    from amqptasks.errors import PublishConnectionError

    yaml = (
        "broker:\n  url: amqp://guest:guest@127.0.0.1:1/%2F\n"
        "  publish_retry: {max_retries: 2, interval_step: 0.01, interval_max: 0.01}\ntopology:\n  provision: false\n"
    )
    app = App(config=load_config_text(yaml, "app.yaml"))

    @app.task(name="t", queue="q")
    def t() -> None: ...

    # When a batch is published (the path the worker's own re-publishes share: the app's publishers' default)
    with pytest.raises(PublishConnectionError) as raised:
        app.publish_many([t.s()])

    # Then it gave up after the YAML's 2 retries (Celery's default would be 3), saying it may have been delivered
    assert "gave up after 2 retries" in str(raised.value)
    assert "broker.publish_retry" in str(raised.value)
