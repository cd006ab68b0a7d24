from __future__ import annotations

import pytest

from amqptasks.broker.url import BrokerURL, auth_mechanism, mask_url, query_options
from amqptasks.config import check_text

SECRET = "s3cr3t-Pa55"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("amqp://", ("amqp", "localhost", 5672, "guest", "guest", "/")),
        ("amqp://rabbit", ("amqp", "rabbit", 5672, "guest", "guest", "/")),
        ("amqps://rabbit", ("amqps", "rabbit", 5671, "guest", "guest", "/")),
        ("AMQPS://rabbit:1234", ("amqps", "rabbit", 1234, "guest", "guest", "/")),
        ("amqp://user:pass@host:10000/vhost", ("amqp", "host", 10000, "user", "pass", "vhost")),
        # The spec's own percent-decoding example.
        ("amqp://user%61:%61pass@ho%61st:10000/v%2fhost", ("amqp", "hoast", 10000, "usera", "apass", "v/host")),
        ("amqp://us%40er:p%40ss%2Fw%3Ard@host/", ("amqp", "host", 5672, "us@er", "p@ss/w:rd", "/")),
        ("amqp://user@host", ("amqp", "host", 5672, "user", "guest", "/")),
        ("amqp://:@host", ("amqp", "host", 5672, "", "", "/")),
        ("amqp://host:", ("amqp", "host", 5672, "guest", "guest", "/")),
        ("amqp://[::1]:5673/v", ("amqp", "::1", 5673, "guest", "guest", "v")),
        ("  amqp://host/v\n", ("amqp", "host", 5672, "guest", "guest", "v")),
    ],
)
def test_parse_fills_in_spec_defaults_and_percent_decodes(url: str, expected: tuple[object, ...]) -> None:
    parsed = BrokerURL.parse(url)

    assert (parsed.scheme, parsed.host, parsed.port, parsed.username, parsed.password, parsed.vhost) == expected


@pytest.mark.parametrize(
    ("url", "vhost"),
    [
        ("amqp://host", "/"),  # absent vhost: RabbitMQ's default
        ("amqp://host/", "/"),  # the spec's zero-length vhost: mapped to "/" too, like pika
        ("amqp://host/%2F", "/"),
        ("amqp://host/%2f", "/"),
        ("amqp://host/billing", "billing"),
        ("amqp://host/%2Fbilling", "/billing"),
        ("amqp://host/team%40x", "team@x"),
        ("amqp://host/a%20b?heartbeat=5", "a b"),
    ],
)
def test_vhost_is_the_single_percent_decoded_path_segment(url: str, vhost: str) -> None:
    assert BrokerURL.parse(url).vhost == vhost


def test_query_parameters_are_kept_as_strings() -> None:
    parsed = BrokerURL.parse("amqp://host/?heartbeat=30&connection_timeout=5000&locale=")

    assert dict(parsed.query) == {"heartbeat": "30", "connection_timeout": "5000", "locale": ""}


def test_a_parsed_url_cannot_be_changed_through_its_query() -> None:
    parsed = BrokerURL.parse("amqp://host/?heartbeat=30")

    with pytest.raises(TypeError):
        parsed.query["heartbeat"] = "0"  # type: ignore[index]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://guest:guest@host/", "unsupported broker URL scheme 'http'"),
        ("redis://host", "unsupported broker URL scheme 'redis'"),
        ("localhost:5672", "must start with amqp:// or amqps://"),
        ("", "must start with amqp:// or amqps://"),
        ("amqp://host:abc/", "invalid port 'abc'"),
        ("amqp://host:0/", "invalid port '0'"),
        ("amqp://host:65536/", "invalid port '65536'"),
        ("amqp://host:-1/", "invalid port '-1'"),
        ("amqp://host/a/b", "single path segment"),
        ("amqp://host/v#frag", "fragment"),
        ("amqp://host/?heartbeat=1&heartbeat=2", "more than once"),
        ("amqp://[::1/", "IPv6"),
    ],
)
def test_invalid_urls_are_rejected_with_a_clear_message(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BrokerURL.parse(url)


@pytest.mark.parametrize(
    "url",
    [
        f"amqp://user:{SECRET}@host:abc/",
        f"amqp://user:{SECRET}@host/a/b",
        f"amqp://user:{SECRET}@host/v#frag",
        f"amqp://user:{SECRET}@host/?x=1&x=2",
        f"http://user:{SECRET}@host/",
        f"user:{SECRET}@host",
        # Unencoded reserved characters in the password cut the authority short.
        "amqp://user:s3cr/3t-Pa55@host/",
        "amqp://user:s3cr?3t-Pa55@host/",
        "amqp://user:s3cr#3t-Pa55@host/",
    ],
)
def test_error_messages_never_contain_the_password(url: str) -> None:
    with pytest.raises(ValueError) as caught:
        BrokerURL.parse(url)

    for fragment in (SECRET, "3t-Pa55"):
        assert fragment not in str(caught.value)
    assert caught.value.__cause__ is None or SECRET not in str(caught.value.__cause__)


def test_masked_forms_never_contain_the_password() -> None:
    parsed = BrokerURL.parse(f"amqps://user:{SECRET}@host/prod")

    for shown in (parsed.masked(), repr(parsed), str(parsed), f"{parsed}", f"{parsed!r}"):
        assert SECRET not in shown
        assert "****" in shown
    assert parsed.masked() == "amqps://user:****@host:5671/prod"


@pytest.mark.parametrize(
    "url",
    [
        "amqp://guest:guest@localhost:5672/%2F",
        "amqps://us%40er:p%40ss%2Fw%3Ard@rabbit.example.com:5671/billing",
        "amqp://a:b@h:1/%2Fslashed%2Fname",
        "amqp://a:b@[::1]:5672/v?heartbeat=30&channel_max=10",
        "amqp://:@h:5672/%23hash%3F",
    ],
)
def test_canonical_urls_round_trip(url: str) -> None:
    parsed = BrokerURL.parse(url)

    assert parsed.to_url() == url
    assert BrokerURL.parse(parsed.to_url()) == parsed


@pytest.mark.parametrize(
    ("url", "canonical"),
    [
        ("amqp://host", "amqp://guest:guest@host:5672/%2F"),
        ("amqp://host/", "amqp://guest:guest@host:5672/%2F"),
        ("amqps://u:p@host/v", "amqps://u:p@host:5671/v"),
    ],
)
def test_to_url_spells_out_every_default(url: str, canonical: str) -> None:
    assert BrokerURL.parse(url).to_url() == canonical


def test_with_vhost_changes_only_the_vhost() -> None:
    parsed = BrokerURL.parse(f"amqp://user:{SECRET}@host:5673/?heartbeat=5")

    moved = parsed.with_vhost("other/vhost")

    assert moved.vhost == "other/vhost"
    assert moved.to_url() == f"amqp://user:{SECRET}@host:5673/other%2Fvhost?heartbeat=5"
    assert parsed.vhost == "/"


def test_equal_urls_are_equal_and_hash_alike() -> None:
    a = BrokerURL.parse("amqp://host/?heartbeat=5")
    b = BrokerURL.parse("amqp://guest:guest@host:5672/%2F?heartbeat=5")

    assert a == b
    assert hash(a) == hash(b)
    assert a != BrokerURL.parse("amqp://host/?heartbeat=6")


@pytest.mark.parametrize(
    ("url", "management"),
    [
        ("amqp://guest:guest@rabbit:5672/", "http://rabbit:15672"),
        ("amqp://rabbit:5999/v", "http://rabbit:15672"),
        ("amqps://rabbit.example.com/v", "https://rabbit.example.com:15671"),
        ("amqp://[::1]", "http://[::1]:15672"),
    ],
)
def test_management_url_is_derived_from_the_amqp_host(url: str, management: str) -> None:
    assert BrokerURL.parse(url).management_url() == management


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (f"amqp://user:{SECRET}@host/v", "amqp://user:****@host/v"),
        (f"https://admin:{SECRET}@rabbit:15671/api", "https://admin:****@rabbit:15671/api"),
        (f"redis://:{SECRET}@cache:6379/0", "redis://:****@cache:6379/0"),
        (f"postgresql://u:{SECRET}@db/app?sslmode=require", "postgresql://u:****@db/app?sslmode=require"),
        # Unencoded '@', '/' or '#' in the password: everything up to the last '@' is hidden.
        ("amqp://user:p@ss/w#rd@host/v", "amqp://user:****@host/v"),
        ("http://host/path?mail=a@b.example", "http://host/path?mail=a@b.example"),
        ("amqp://user@host/v", "amqp://user@host/v"),
        ("amqp://user:@host/v", "amqp://user:@host/v"),
        ("http://host:15672/api", "http://host:15672/api"),
        ("not a url", "not a url"),
        ("", ""),
        ("://:x@", "://:x@"),
        ("amqp://", "amqp://"),
    ],
)
def test_mask_url_hides_the_password_of_any_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


@pytest.mark.parametrize("garbage", [None, 42, b"amqp://u:p@h", "\x00://\udcff:x@y"])
def test_mask_url_never_raises(garbage: object) -> None:
    assert isinstance(mask_url(garbage), str)  # type: ignore[arg-type]


def test_direct_construction_validates_scheme_and_port() -> None:
    with pytest.raises(ValueError, match="scheme"):
        BrokerURL("http", "h", 80, "u", SECRET, "/")
    with pytest.raises(ValueError, match="port"):
        BrokerURL("amqp", "h", 0, "u", SECRET, "/")


# --- several nodes (a cluster) and the login mechanism --------------------------------------------------------


def test_a_cluster_url_lists_its_nodes_and_later_nodes_take_the_first_ones_user_vhost_and_query() -> None:
    url = BrokerURL.parse("amqp://app:s3cret@h1:5672/shop?heartbeat=10;amqp://h2:5673 ; amqp://ops:x@h3/other")

    assert [(n.host, n.port, n.username, n.vhost) for n in url.nodes()] == [
        ("h1", 5672, "app", "shop"),
        ("h2", 5673, "app", "shop"),
        ("h3", 5672, "ops", "other"),
    ]
    assert url.nodes()[1].password == "s3cret" and dict(url.nodes()[1].query) == {"heartbeat": "10"}
    assert (url.host, url.port) == ("h1", 5672)  # the URL itself is its first node
    assert url.masked() == (
        "amqp://app:****@h1:5672/shop?heartbeat=10;amqp://app:****@h2:5673/shop?heartbeat=10;"
        "amqp://ops:****@h3:5672/other"
    )
    assert "s3cret" not in repr(url) and BrokerURL.parse(url.to_url()) == url
    assert [n.vhost for n in url.with_vhost("v").nodes()] == ["v", "v", "v"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("amqp://h1;h2", "separate whole URLs with ';'"),
        ("amqp://h1;amqps://h2", "every node of a cluster has the same scheme"),
    ],
)
def test_a_cluster_url_written_wrong_says_how_to_write_it(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BrokerURL.parse(text)


def test_auth_mechanism_external_needs_amqps_and_unknown_mechanisms_are_named() -> None:
    assert auth_mechanism(BrokerURL.parse("amqps://h/?auth_mechanism=EXTERNAL")) == "external"
    assert auth_mechanism(BrokerURL.parse("amqp://h/")) == "plain"
    with pytest.raises(ValueError, match="auth_mechanism=external needs amqps://"):
        query_options(BrokerURL.parse("amqp://h/?auth_mechanism=external"))
    with pytest.raises(ValueError, match="expected plain or external"):
        query_options(BrokerURL.parse("amqps://h/?auth_mechanism=kerberos"))


def test_a_yaml_list_of_urls_is_a_cluster_and_each_password_is_masked() -> None:
    config, diags = check_text("broker:\n  url:\n    - amqp://app:pw1@h1/shop\n    - amqp://ops:pw2@h2\n")

    assert config is not None, [str(d) for d in diags.items]
    assert [n.host for n in BrokerURL.parse(config.broker.url).nodes()] == ["h1", "h2"]
    assert mask_url(config.broker.url) == "amqp://app:****@h1/shop;amqp://ops:****@h2"
    _, empty = check_text("broker:\n  url: []\n")
    assert [d.message for d in empty.errors] == ["broker: url: an empty list names no broker; give at least one URL"]
