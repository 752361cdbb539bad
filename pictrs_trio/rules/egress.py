"""Where a fetch of a client-supplied URL may connect: the SSRF guard's decision. Pure.

``/image/download?url=`` and ``?proxy=`` make this server fetch what a client names, so by
default they may reach only public addresses: not loopback, private, link-local, shared
(CGNAT), multicast, unspecified, broadcast, reserved, benchmarking or documentation space,
in IPv4 or IPv6, nor any of those hidden in an IPv6 address that carries an IPv4 one
(IPv4-mapped, IPv4-translated, NAT64, 6to4, Teredo). ``client.allowed_networks`` lets some
through (docs/configuration.md). pict-rs has no such guard; see docs/api.md.

The ranges are written out here, from IANA's special-purpose address registries, rather
than taken from ``ipaddress``'s ``is_private``/``is_global``, whose lists changed between
Python releases. ``parse_host`` reads every numeric spelling of an IPv4 address that
``inet_aton`` and URL parsers accept (``127.1``, ``2130706433``, ``0x7f000001``,
``0177.0.0.1``), so a literal host is judged without a lookup, as are ``localhost`` names
(``host_refusal``); the services layer judges the addresses any other name resolves to with
``refusal`` and connects to exactly those.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from urllib.parse import urlsplit

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network

SCHEMES = frozenset({"http", "https"})
MAX_REDIRECTS = 10  # reqwest's default, which pict-rs's client keeps


class _Embeds(enum.Enum):
    """An IPv6 range whose addresses carry an IPv4 address the traffic really goes to."""

    MAPPED = "IPv4-mapped"  # ::ffff:a.b.c.d, the kernel connects over IPv4
    TRANSLATED = "IPv4-translated"  # ::ffff:0:a.b.c.d (SIIT, RFC 2765)
    NAT64 = "NAT64"  # 64:ff9b::a.b.c.d, a NAT64 gateway connects to a.b.c.d
    SIX_TO_FOUR = "6to4"  # 2002:AABB:CCDD::/48 is routed to a.b.c.d
    TEREDO = "Teredo"  # 2001:0:SSSS:SSSS:...:~CCCC:~CCCC (server and client)


# (range, why it is refused), checked in order: the first match names the reason.
IPV4_REFUSED: tuple[tuple[IPv4Network, str], ...] = tuple(
    (IPv4Network(net), why)
    for net, why in (
        ("0.0.0.0/32", "the unspecified address"),
        ("0.0.0.0/8", "in 'this network' (0.0.0.0/8)"),
        ("10.0.0.0/8", "a private address"),
        ("100.64.0.0/10", "a shared (CGNAT) address"),
        ("127.0.0.0/8", "a loopback address"),
        ("169.254.0.0/16", "a link-local address"),
        ("172.16.0.0/12", "a private address"),
        ("192.0.0.0/24", "reserved (IETF protocol assignments)"),
        ("192.0.2.0/24", "a documentation address"),
        ("192.88.99.0/24", "reserved (6to4 relay anycast)"),
        ("192.168.0.0/16", "a private address"),
        ("198.18.0.0/15", "a benchmarking address"),
        ("198.51.100.0/24", "a documentation address"),
        ("203.0.113.0/24", "a documentation address"),
        ("224.0.0.0/4", "a multicast address"),
        ("255.255.255.255/32", "the broadcast address"),
        ("240.0.0.0/4", "reserved (240.0.0.0/4)"),
    )
)

IPV6_REFUSED: tuple[tuple[IPv6Network, str | _Embeds], ...] = tuple(
    (IPv6Network(net), why)
    for net, why in (
        ("::/128", "the unspecified address"),
        ("::1/128", "a loopback address"),
        ("::ffff:0:0/96", _Embeds.MAPPED),
        ("::ffff:0:0:0/96", _Embeds.TRANSLATED),
        ("::/96", "reserved (IPv4-compatible, deprecated)"),
        ("64:ff9b::/96", _Embeds.NAT64),
        ("64:ff9b:1::/48", "reserved (local-use NAT64)"),
        ("100::/64", "reserved (discard-only)"),
        ("2001::/32", _Embeds.TEREDO),
        ("2001:2::/48", "a benchmarking address"),
        ("2001:db8::/32", "a documentation address"),
        ("2001::/23", "reserved (IETF protocol assignments)"),
        ("2002::/16", _Embeds.SIX_TO_FOUR),
        ("3fff::/20", "a documentation address"),
        ("fc00::/7", "a private (unique local) address"),
        ("fe80::/10", "a link-local address"),
        ("fec0::/10", "a site-local address (deprecated)"),
        ("ff00::/8", "a multicast address"),
    )
)
# Everything outside 2000::/3 is unassigned or special (IANA's IPv6 address space registry).
IPV6_GLOBAL_UNICAST = IPv6Network("2000::/3")


def _embedded(address: IPv6Address, kind: _Embeds) -> tuple[IPv4Address, ...]:
    low = IPv4Address(int(address) & 0xFFFF_FFFF)
    if kind is _Embeds.SIX_TO_FOUR:
        return (IPv4Address((int(address) >> 80) & 0xFFFF_FFFF),)
    if kind is _Embeds.TEREDO:
        server = IPv4Address((int(address) >> 64) & 0xFFFF_FFFF)
        return (server, IPv4Address(int(low) ^ 0xFFFF_FFFF))
    return (low,)


def refusal(address: Address, allowed: Sequence[Network] = ()) -> str | None:
    """Why a fetch may not connect to ``address``, or None when it may.

    An address inside one of the ``allowed`` networks may always be reached. An IPv6
    address carrying an IPv4 one is judged by the IPv4 address (and by ``allowed`` for it).
    """
    if any(address in network for network in allowed):
        return None
    if isinstance(address, IPv4Address):
        for network, why in IPV4_REFUSED:
            if address in network:
                return why
        return None
    for network6, why6 in IPV6_REFUSED:
        if address not in network6:
            continue
        if isinstance(why6, str):
            return why6
        for inner in _embedded(address, why6):
            if (inner_why := refusal(inner, allowed)) is not None:
                return f"{why6.value}, carrying {inner}: {inner_why}"
        return None
    if address not in IPV6_GLOBAL_UNICAST:
        return "reserved (outside 2000::/3)"
    return None


# One part of a numeric IPv4 host, as inet_aton and the WHATWG URL standard read it.
_HEX = re.compile(r"0[xX][0-9a-fA-F]*")
_OCTAL = re.compile(r"0[0-7]*")
_DECIMAL = re.compile(r"[1-9][0-9]*")
_DIGITS = re.compile(r"[0-9]+")


def _part(text: str) -> int | None:
    if _HEX.fullmatch(text):
        return int(text[2:] or "0", 16)
    if _OCTAL.fullmatch(text):
        return int(text, 8)
    if _DECIMAL.fullmatch(text):
        return int(text)
    return None


def parse_host(host: str) -> Address | None:
    """The address a URL host spells, or None for a name that needs a lookup.

    IPv6 with or without brackets (a zone ``%eth0`` kept). IPv4 in any form ``inet_aton``
    takes: one to four parts, each decimal, octal (leading ``0``) or hex (``0x``), the last
    filling the remaining bytes (``127.1``, ``2130706433``, ``0x7f.0.0.1``); one trailing
    dot is ignored. A host whose last label is a number is an IPv4 address or nothing (the
    WHATWG URL standard's rule), so ValueError for one that is numeric but no address
    (``1.2.3.256``, ``08.1.1.1``, ``1.2.3.4.5``, ``a.1``): no lookup is tried for it.
    """
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if ":" in text:
        return IPv6Address(text)  # ValueError when it is not one
    if text.endswith(".") and len(text) > 1:
        text = text[:-1]
    parts = text.split(".")
    if not (_DIGITS.fullmatch(parts[-1]) or _HEX.fullmatch(parts[-1])):
        return None  # a name
    numbers = [_part(p) for p in parts]
    values = [n for n in numbers if n is not None]
    if len(values) != len(parts) or len(values) > 4:
        raise ValueError(f"{host!r} is not a valid IPv4 address")
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (5 - len(values)):
        raise ValueError(f"{host!r} is not a valid IPv4 address (a part is too large)")
    number = last
    for index, value in enumerate(head):
        number += value << (8 * (3 - index))
    return IPv4Address(number)


# A host name as resolvers take it: letters, digits, hyphens and underscores in dot-separated
# labels, one trailing dot allowed (IDNs reach here in their xn-- form).
_NAME = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.?")
_LOOPBACK = (IPv4Address("127.0.0.1"), IPv6Address("::1"))


def _name_refusal(name: str, allowed: Sequence[Network]) -> str | None:
    if not _NAME.fullmatch(name):
        return f"{name!r} is not a valid host name"
    # RFC 6761: localhost and its subdomains are loopback, whatever a resolver says, so they
    # are refused without a look-up (which could even go out to DNS for ``localhost.``)
    # unless loopback is allowed; then what they resolve to is judged.
    is_localhost = name.rstrip(".").lower().rsplit(".", 1)[-1] == "localhost"
    if is_localhost and all(refusal(address, allowed) is not None for address in _LOOPBACK):
        return f"{name} is a loopback name"
    return None


def host_refusal(host: str, allowed: Sequence[Network] = ()) -> str | None:
    """Why a URL host may not be fetched, judged without a look-up, or None: an address
    (any spelling ``parse_host`` reads) by ``refusal``; a name when it is malformed or
    ``localhost`` (or under it). A name that passes still has each address it resolves to
    judged by ``refusal``."""
    try:
        address = parse_host(host)
    except ValueError as exc:
        return str(exc)
    if address is None:
        return _name_refusal(host, allowed)
    why = refusal(address, allowed)
    return None if why is None else f"{address} is {why}"


def url_refusal(scheme: str, host: str, allowed: Sequence[Network] = ()) -> str | None:
    """Why a URL with this scheme and host may not be fetched, judged without a look-up,
    or None (see ``host_refusal``)."""
    if scheme.lower() not in SCHEMES:
        return f"only http and https URLs are fetched, not {scheme or 'no scheme'}"
    return host_refusal(host, allowed)


def url_for_log(url: str) -> str:
    """``url`` as a log line may show it: scheme, host, port and path, without the userinfo
    and the query, which may carry credentials or a signature."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{host}{port}{parts.path}"
