"""The SSRF guard's decision (rules/egress.py): every refused range, in IPv4 and IPv6 and in
each IPv6 form that carries an IPv4 address, every numeric spelling of an IPv4 host, and the
operator's allowed networks."""

from __future__ import annotations

import socket
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from pictrs_trio.rules import egress
from pictrs_trio.rules.egress import (
    IPV4_REFUSED,
    IPV6_REFUSED,
    host_refusal,
    parse_host,
    refusal,
    url_refusal,
)

# --- IPv4 ranges ------------------------------------------------------------------------------

REFUSED_V4 = [
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "this network"),
    ("10.0.0.1", "private"),
    ("10.255.255.255", "private"),
    ("100.64.0.1", "CGNAT"),
    ("100.127.255.254", "CGNAT"),
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("169.254.169.254", "link-local"),  # the cloud metadata service
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.0.0.9", "IETF"),
    ("192.0.2.1", "documentation"),
    ("192.88.99.1", "6to4 relay"),
    ("192.168.1.1", "private"),
    ("198.18.0.1", "benchmarking"),
    ("198.19.255.255", "benchmarking"),
    ("198.51.100.7", "documentation"),
    ("203.0.113.9", "documentation"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "broadcast"),
]

PUBLIC_V4 = [
    "1.1.1.1",
    "8.8.8.8",
    "9.255.255.255",
    "11.0.0.0",
    "100.63.255.255",
    "100.128.0.0",
    "126.255.255.255",
    "128.0.0.0",
    "169.253.255.255",
    "169.255.0.0",
    "172.15.255.255",
    "172.32.0.0",
    "192.0.1.0",
    "192.0.3.0",
    "192.167.255.255",
    "192.169.0.0",
    "198.17.255.255",
    "198.20.0.0",
    "223.255.255.255",
]


@pytest.mark.parametrize(("text", "why"), REFUSED_V4)
def test_refused_ipv4(text: str, why: str) -> None:
    reason = refusal(IPv4Address(text))
    assert reason is not None
    assert why.lower() in reason.lower()


@pytest.mark.parametrize("text", PUBLIC_V4)
def test_public_ipv4(text: str) -> None:
    assert refusal(IPv4Address(text)) is None


def v4_in(network: IPv4Network) -> st.SearchStrategy[IPv4Address]:
    first = int(network.network_address)
    return st.integers(first, first + network.num_addresses - 1).map(IPv4Address)


any_refused_v4 = st.sampled_from([net for net, _ in IPV4_REFUSED]).flatmap(v4_in)
any_v4 = st.integers(0, 2**32 - 1).map(IPv4Address)


@given(any_refused_v4)
def test_every_address_of_a_refused_ipv4_range_is_refused(address: IPv4Address) -> None:
    assert refusal(address) is not None


@given(any_v4)
def test_what_is_allowed_python_calls_global(address: IPv4Address) -> None:
    """A cross-check with ``ipaddress``: nothing allowed is what it calls non-global (ours is
    stricter: multicast, 192.0.0.0/24 and 6to4 relays are refused too)."""
    if refusal(address) is None:
        assert address.is_global


# --- IPv6 ranges ------------------------------------------------------------------------------

REFUSED_V6 = [
    ("::", "unspecified"),
    ("::1", "loopback"),
    ("::2", "IPv4-compatible"),
    ("::7f00:1", "IPv4-compatible"),  # ::127.0.0.1
    ("::808:808", "IPv4-compatible"),  # ::8.8.8.8: deprecated whatever it carries
    ("64:ff9b:1::1", "local-use NAT64"),
    ("100::1", "discard"),
    ("2001:2::1", "benchmarking"),
    ("2001:db8::1", "documentation"),
    ("2001:10::1", "IETF"),
    ("3fff::1", "documentation"),
    ("5f00::1", "reserved"),
    ("fc00::1", "unique local"),
    ("fd12:3456::1", "unique local"),
    ("fe80::1", "link-local"),
    ("fe80::1%2", "link-local"),
    ("febf::1", "link-local"),
    ("fec0::1", "site-local"),
    ("ff02::1", "multicast"),
    ("ff0e::1", "multicast"),
    ("1::1", "reserved"),
    ("4000::1", "reserved"),
    ("e000::1", "reserved"),
]

PUBLIC_V6 = ["2606:4700:4700::1111", "2a00:1450:4001::200e", "2001:4860::1", "2c0f::1"]


@pytest.mark.parametrize(("text", "why"), REFUSED_V6)
def test_refused_ipv6(text: str, why: str) -> None:
    reason = refusal(IPv6Address(text))
    assert reason is not None
    assert why.lower() in reason.lower()


@pytest.mark.parametrize("text", PUBLIC_V6)
def test_public_ipv6(text: str) -> None:
    assert refusal(IPv6Address(text)) is None


@given(st.integers(0, 2**128 - 1).map(IPv6Address))
def test_ipv6_outside_global_unicast_is_refused(address: IPv6Address) -> None:
    if address not in IPv6Network("2000::/3") and address.ipv4_mapped is None:
        top96 = int(address) >> 32
        assume(top96 not in (0xFFFF_0000, 0x64_FF9B_0000_0000_0000_0000))  # translated, NAT64
        assert refusal(address) is not None


@given(st.sampled_from([net for net, why in IPV6_REFUSED if isinstance(why, str)]))
def test_every_plain_ipv6_range_is_refused_at_both_ends(network: IPv6Network) -> None:
    assert refusal(network.network_address) is not None
    assert refusal(network.broadcast_address) is not None


# --- IPv4 inside IPv6 -------------------------------------------------------------------------


def mapped(v4: IPv4Address) -> IPv6Address:
    return IPv6Address(0xFFFF_0000_0000 | int(v4))


def translated(v4: IPv4Address) -> IPv6Address:
    return IPv6Address(0xFFFF_0000_0000_0000 | int(v4))


def nat64(v4: IPv4Address) -> IPv6Address:
    return IPv6Address(int(IPv6Address("64:ff9b::")) | int(v4))


def six_to_four(v4: IPv4Address, tail: int = 1) -> IPv6Address:
    return IPv6Address((0x2002 << 112) | (int(v4) << 80) | tail)


def teredo(server: IPv4Address, client: IPv4Address) -> IPv6Address:
    return IPv6Address(
        (0x2001_0000 << 96)
        | (int(server) << 64)
        | (0x8000_63BF << 32)
        | (int(client) ^ 0xFFFF_FFFF)
    )


PUBLIC_SERVER = IPv4Address("65.54.227.120")  # a Teredo server, and public
EMBEDDINGS = {
    "IPv4-mapped": mapped,
    "IPv4-translated": translated,
    "NAT64": nat64,
    "6to4": six_to_four,
    "Teredo": lambda v4: teredo(PUBLIC_SERVER, v4),
}


@pytest.mark.parametrize("form", sorted(EMBEDDINGS))
@given(address=any_refused_v4)
def test_a_refused_ipv4_is_refused_inside_ipv6(form: str, address: IPv4Address) -> None:
    carried = EMBEDDINGS[form](address)
    reason = refusal(carried)
    assert reason is not None
    assert form in reason


@pytest.mark.parametrize("form", sorted(EMBEDDINGS))
@given(address=any_v4)
def test_inside_ipv6_an_ipv4_is_judged_as_itself(form: str, address: IPv4Address) -> None:
    assert (refusal(EMBEDDINGS[form](address)) is None) == (refusal(address) is None)


def test_teredo_server_is_judged_too() -> None:
    assert refusal(teredo(IPv4Address("10.0.0.1"), IPv4Address("8.8.8.8"))) is not None


def test_embedding_spellings() -> None:
    refused = ["::ffff:127.0.0.1", "::ffff:7f00:1", "::ffff:0:127.0.0.1",
               "64:ff9b::127.0.0.1", "64:ff9b::a9fe:a9fe", "2002:7f00:1::", "2002:a00:1:1::1",
               "::ffff:10.1.2.3"]  # fmt: skip
    for text in refused:
        assert refusal(IPv6Address(text)) is not None, text
    assert refusal(IPv6Address("::ffff:8.8.8.8")) is None
    assert refusal(IPv6Address("64:ff9b::8.8.8.8")) is None
    assert refusal(IPv6Address("2002:808:808::1")) is None


# --- allowed networks -------------------------------------------------------------------------


def test_allowed_networks_let_their_addresses_through() -> None:
    allowed = [ip_network("127.0.0.0/8"), ip_network("fd00::/8"), ip_network("10.1.0.0/16")]
    inside = ["127.0.0.1", "127.9.9.9", "fd00::1", "10.1.2.3", "::ffff:127.0.0.1",
              "64:ff9b::7f00:1", "2002:7f00:1::1"]  # fmt: skip
    for text in inside:
        assert refusal(ip_address(text), allowed) is None, text
    for text in ("10.2.0.1", "::1", "192.168.0.1", "fe80::1", "::ffff:10.2.0.1"):
        assert refusal(ip_address(text), allowed) is not None, text
    # an IPv4 network says nothing about IPv6 addresses outside the embeddings
    assert refusal(IPv6Address("::7f00:1"), [ip_network("127.0.0.0/8")]) is not None


@given(any_v4, st.integers(0, 32))
def test_an_address_inside_an_allowed_network_is_allowed(address: IPv4Address, bits: int) -> None:
    network = IPv4Network(f"{address}/{bits}", strict=False)
    assert refusal(address, [network]) is None
    assert refusal(mapped(address), [network]) is None


# --- numeric spellings of an IPv4 host --------------------------------------------------------

SPELLINGS = {
    "127.0.0.1": "127.0.0.1",
    "127.1": "127.0.0.1",
    "127.0.1": "127.0.0.1",
    "2130706433": "127.0.0.1",
    "0x7f000001": "127.0.0.1",
    "0X7F000001": "127.0.0.1",
    "0x7f.0x0.0x0.0x1": "127.0.0.1",
    "0x7f.1": "127.0.0.1",
    "0177.0.0.1": "127.0.0.1",
    "0177.1": "127.0.0.1",
    "017700000001": "127.0.0.1",
    "127.0.0.1.": "127.0.0.1",
    "0": "0.0.0.0",
    "0.0.0.0": "0.0.0.0",
    "0x": "0.0.0.0",
    "00": "0.0.0.0",
    "169.254.43518": "169.254.169.254",
    "0xa9fea9fe": "169.254.169.254",
    "3232235521": "192.168.0.1",
    "10.1": "10.0.0.1",
    "4294967295": "255.255.255.255",
    "8.8.8.8": "8.8.8.8",
}


@pytest.mark.parametrize(("host", "address"), sorted(SPELLINGS.items()))
def test_numeric_spellings(host: str, address: str) -> None:
    assert parse_host(host) == IPv4Address(address)


@pytest.mark.parametrize(
    "host",
    ["127.0.0.256", "256.1", "1.2.3.4.5", "08.1.1.1", "09", "1.2.3.08", "0x1g.1", "a.1",
     "example.123", "4294967296", "1..2", ".1", "1.2.3.0x100"],
)  # fmt: skip
def test_numeric_hosts_that_are_no_address_are_refused(host: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        parse_host(host)
    assert url_refusal("http", host) is not None


NAMES = ["example.com", "Example.COM.", "1.2.3.example", "0x7f.example", "a0x1", "12a",
         "1.2.3.4a", "xn--bcher-kva.example", "under_score.example",
         "localhost.example"]  # fmt: skip


@pytest.mark.parametrize("host", NAMES)
def test_names_need_a_lookup(host: str) -> None:
    assert parse_host(host) is None
    assert url_refusal("https", host) is None


LOCALHOSTS = ["localhost", "LOCALHOST", "localhost.", "LocalHost.", "a.localhost", "x.y.localhost."]


@pytest.mark.parametrize("host", LOCALHOSTS)
def test_localhost_names_are_loopback_without_a_lookup(host: str) -> None:
    assert parse_host(host) is None
    assert url_refusal("http", host) == f"{host} is a loopback name"
    assert url_refusal("http", host, [ip_network("10.0.0.0/8")]) is not None
    # allowed loopback: the name is resolved, and what it resolves to is judged
    assert url_refusal("http", host, [ip_network("127.0.0.0/8")]) is None
    assert url_refusal("http", host, [ip_network("::1/128")]) is None


@pytest.mark.parametrize(
    "host", ["", "exa mple.com", "127%2e0%2e0%2e1", "a..b", ".example", "a/b", "a@b", "é.example"]
)
def test_malformed_names_are_refused(host: str) -> None:
    assert parse_host(host) is None or host == ""
    assert host_refusal(host) is not None


@pytest.mark.parametrize(
    ("host", "address"),
    [("::1", "::1"), ("[::1]", "::1"), ("[::ffff:127.0.0.1]", "::ffff:7f00:1"),
     ("fe80::1%eth0", "fe80::1%eth0")],
)  # fmt: skip
def test_ipv6_hosts(host: str, address: str) -> None:
    assert parse_host(host) == IPv6Address(address)


def test_an_ipv6_host_that_is_no_address() -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        parse_host("[::1::2]")


def part_spelling(value: int, base: str) -> str:
    return {"dec": str(value), "oct": "0" + format(value, "o"), "hex": hex(value)}[base]


bases = st.sampled_from(["dec", "oct", "hex"])


@given(any_v4, st.integers(1, 4), st.lists(bases, min_size=4, max_size=4))
def test_every_spelling_reads_as_inet_aton_does(
    address: IPv4Address, parts: int, spelled: list[str]
) -> None:
    """glibc's inet_aton is the oracle: getaddrinfo reads a numeric host the same way."""
    raw = address.packed
    head = list(raw[: parts - 1])
    last = int.from_bytes(raw[parts - 1 :], "big")
    host = ".".join(part_spelling(v, b) for v, b in zip([*head, last], spelled, strict=False))
    assert parse_host(host) == address
    assert IPv4Address(socket.inet_aton(host)) == address


# --- whole URLs -------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["ftp", "file", "gopher", "", "data", "ws"])
def test_only_http_and_https(scheme: str) -> None:
    reason = url_refusal(scheme, "example.com")
    assert reason is not None
    assert "http" in reason


def test_url_refusal_names_the_address() -> None:
    assert url_refusal("http", "2130706433") == "127.0.0.1 is a loopback address"
    assert url_refusal("HTTPS", "8.8.8.8") is None
    assert url_refusal("http", "127.1", [ip_network("127.0.0.0/8")]) is None


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "https://u:secret@example.com/a/b.png?X-Amz-Signature=secret",
            "https://example.com/a/b.png",
        ),
        ("http://[::1]:8080/check?token=secret", "http://[::1]:8080/check"),
        ("http://127.0.0.1:99999/x", "http://127.0.0.1/x"),
        ("https://example.com", "https://example.com"),
    ],
)
def test_url_for_log_leaves_out_credentials_and_query(url: str, shown: str) -> None:
    assert egress.url_for_log(url) == shown
    assert "secret" not in egress.url_for_log(url)
