"""Fetching a URL named by untrusted input, without letting it reach inside the network.

Only http(s). The host is resolved here, once, and every address must be public (not
private, loopback, link-local, multicast, reserved, shared, unspecified, or a cloud
metadata address; IPv4-mapped, 6to4, Teredo and NAT64 IPv6 forms are unwrapped first).
The connection then goes to exactly those vetted addresses (aiohttp's resolver is pinned
to them), so a DNS answer that changes between the check and the connect (rebinding)
cannot swap them. Redirects are followed by hand and every hop is vetted again. Bodies
are size-limited, the whole fetch is time-limited, no proxy from the environment and no
cookies are used. Hosts listed in MAGEAGENT["FETCH_ALLOWED_HOSTS"] (exact names, as
written in URLs) may resolve to private addresses: the way to reach a trusted internal
service.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from .conf import knob

REDIRECTS = {301, 302, 303, 307, 308}
METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254"),
            ipaddress.ip_address("100.100.100.200")}
NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Deprecated site-local IPv6 (RFC 3879): Python counts it as global, some networks still route it inside.
SITE_LOCAL = ipaddress.ip_network("fec0::/10")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class FetchRefused(Exception):
    """The URL may not be fetched (scheme, address, size, redirects, ...)."""


@dataclass(frozen=True)
class Fetched:
    url: str
    content_type: str
    data: bytes

    @property
    def name(self) -> str:
        return URL(self.url).name or URL(self.url).host or "download"


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped:
        return ip.ipv4_mapped
    if ip.sixtofour:
        return ip.sixtofour
    if ip.teredo:
        return ip.teredo[1]
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_refusal(address: str) -> str | None:
    """Why connecting to this IP address is refused, or None when it is public."""
    try:
        ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return f"{address!r} is not an IP address"
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_ipv4(ip)
        if inner is not None:
            reason = address_refusal(str(inner))
            return f"{ip} embeds {reason}" if reason else None
    checks = [(ip in METADATA, "a cloud metadata address"), (ip.is_loopback, "a loopback address"),
              (ip.version == 6 and ip in SITE_LOCAL, "a site-local address"),
              (ip.is_link_local, "a link-local address"), (ip.is_private, "a private address"),
              (ip.is_multicast, "a multicast address"), (ip.is_reserved, "a reserved address"),
              (ip.is_unspecified, "an unspecified address"), (not ip.is_global, "not a public address")]
    for hit, what in checks:
        if hit:
            return f"{ip} is {what}"
    return None


async def _resolve(host: str, port: int) -> list[str]:
    """The host's addresses. The one place names are resolved (tests replace it)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _allowed(url: URL) -> bool:
    """An allowlisted host, named in the setting as Unicode or as punycode."""
    allowed = {_ascii_host(h) for h in knob("FETCH_ALLOWED_HOSTS")}
    return _ascii_host(str(url.raw_host)) in allowed


def _ascii_host(host: str) -> str:
    name = host.lower().rstrip(".")
    try:
        return str(URL.build(scheme="http", host=name).raw_host or name)
    except ValueError:
        return name  # not a host name yarl can encode: compared as written


async def vet(url: URL) -> list[str]:
    """The addresses `url` may be fetched from; FetchRefused when it may not be."""
    if url.scheme not in ("http", "https"):
        raise FetchRefused(f"only http and https URLs can be fetched, not {url.scheme or 'a relative URL'!r}")
    if not url.host:
        raise FetchRefused("the URL has no host")
    if url.user or url.password:
        raise FetchRefused("URLs with credentials are not fetched")
    # The ASCII (punycode) form: what aiohttp resolves and connects to, so what is vetted and pinned.
    host, port = str(url.raw_host), url.explicit_port or (443 if url.scheme == "https" else 80)
    try:
        addresses = [str(ipaddress.ip_address(host.split("%", 1)[0]))]
    except ValueError:
        try:
            addresses = await _resolve(host, port)
        except OSError as exc:
            raise FetchRefused(f"cannot resolve {host}: {exc}") from None
    if not addresses:
        raise FetchRefused(f"{host} has no address")
    if not _allowed(url):
        for address in addresses:
            reason = address_refusal(address)
            if reason:
                raise FetchRefused(f"refused to fetch {host}: {reason}")
    return addresses


class _PinnedResolver(AbstractResolver):
    """Answers only with addresses vet() approved for the current hop."""

    def __init__(self) -> None:
        self.pins: dict[str, list[str]] = {}

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        addresses = self.pins.get(host)
        if not addresses:
            raise OSError(f"{host} was not vetted")
        return [ResolveResult(hostname=host, host=a, port=port,
                              family=socket.AF_INET6 if ":" in a else socket.AF_INET,
                              proto=0, flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV) for a in addresses]

    async def close(self) -> None:
        return None


async def fetch(url: str, *, max_bytes: int | None = None, timeout_s: float | None = None) -> Fetched:
    max_bytes = max_bytes or knob("FETCH_MAX_BYTES")
    timeout_s = timeout_s or knob("FETCH_TIMEOUT_S")
    try:
        target = URL(url)
    except (ValueError, TypeError) as exc:
        raise FetchRefused(f"invalid URL: {exc}") from None
    resolver = _PinnedResolver()
    connector = aiohttp.TCPConnector(resolver=resolver, use_dns_cache=False, force_close=True, limit=4)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, cookie_jar=aiohttp.DummyCookieJar(),
                                     trust_env=False, headers={"User-Agent": "MageAgent-fetch/1.0"}) as session:
        try:
            async with asyncio.timeout(timeout_s):
                return await _follow(session, resolver, target, max_bytes, knob("FETCH_MAX_REDIRECTS"))
        except TimeoutError:
            raise FetchRefused(f"fetching {url} took longer than {timeout_s:g} s") from None
        except aiohttp.ClientError as exc:
            raise FetchRefused(f"fetching {url} failed: {type(exc).__name__}: {exc}") from None


async def _follow(session: aiohttp.ClientSession, resolver: _PinnedResolver, url: URL, max_bytes: int,
                  max_redirects: int) -> Fetched:
    for _hop in range(max_redirects + 1):
        resolver.pins = {str(url.raw_host): await vet(url)}
        async with session.get(url, allow_redirects=False) as resp:
            if resp.status in REDIRECTS and "Location" in resp.headers:
                url = url.join(URL(resp.headers["Location"]))
                continue
            if resp.status >= 400:
                raise FetchRefused(f"{url} answered HTTP {resp.status}")
            if (resp.content_length or 0) > max_bytes:
                raise FetchRefused(f"{url} is larger than the {max_bytes}-byte limit")
            data = bytearray()
            async for chunk in resp.content.iter_chunked(65536):
                data += chunk
                if len(data) > max_bytes:
                    raise FetchRefused(f"{url} is larger than the {max_bytes}-byte limit")
            return Fetched(url=str(url), content_type=resp.headers.get("Content-Type", ""), data=bytes(data))
    raise FetchRefused(f"more than {max_redirects} redirects")


async def post(url: str, *, body: bytes, headers: dict[str, str], timeout_s: float) -> int:
    """POST `body` to a vetted, pinned address of `url` and return the HTTP status; redirects
    are not followed (a 3xx is the answer). FetchRefused when the URL may not be reached or
    the request failed."""
    try:
        target = URL(url)
    except (ValueError, TypeError) as exc:
        raise FetchRefused(f"invalid URL: {exc}") from None
    resolver = _PinnedResolver()
    connector = aiohttp.TCPConnector(resolver=resolver, use_dns_cache=False, force_close=True, limit=1)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s),
                                     cookie_jar=aiohttp.DummyCookieJar(), trust_env=False) as session:
        try:
            async with asyncio.timeout(timeout_s):
                resolver.pins = {str(target.raw_host): await vet(target)}
                async with session.post(target, data=body, headers=headers, allow_redirects=False) as resp:
                    return resp.status
        except TimeoutError:
            raise FetchRefused(f"{url} did not answer within {timeout_s:g} s") from None
        except aiohttp.ClientError as exc:
            raise FetchRefused(f"posting to {url} failed: {type(exc).__name__}: {exc}") from None
