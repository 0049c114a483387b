"""The SSRF guard of URL fetching: no way into loopback, private, link-local or metadata
addresses, whatever the URL, its DNS answer or its redirects say."""

from __future__ import annotations

import json

import pytest

from tools import netfetch
from tools.netfetch import FetchRefused, address_refusal, fetch
from tools.registry import ToolContext, tool_invoke


@pytest.fixture
def dns(monkeypatch):
    """A fake DNS for names the tests invent; records every lookup."""
    records: dict[str, list[str]] = {}
    lookups: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        lookups.append(host)
        if host not in records:
            raise OSError(f"no such host {host}")
        return records[host]

    monkeypatch.setattr(netfetch, "_resolve", resolve)
    return records, lookups


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.8.9.10", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "100.100.100.200",
    "100.64.0.1", "0.0.0.0", "224.0.0.1", "240.0.0.1", "255.255.255.255", "192.0.2.10",
    "::1", "::", "fe80::1", "fc00::1", "fd00:ec2::254", "ff02::1", "fec0::1", "feff:ffff::1",
    "::ffff:127.0.0.1", "::ffff:169.254.169.254", "2002:7f00:1::", "64:ff9b::a9fe:a9fe",
])
def test_non_public_addresses_are_refused(address):
    assert address_refusal(address) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_are_allowed(address):
    assert address_refusal(address) is None


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:{port}/secret", "http://[::1]:{port}/secret", "http://[::ffff:127.0.0.1]:{port}/secret",
    "http://0.0.0.0:{port}/secret", "http://2130706433:{port}/secret", "http://127.1:{port}/secret",
    "http://localhost:{port}/secret", "http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/",
    "http://[fd00:ec2::254]/latest/meta-data/",
])
async def test_it_refuses_urls_that_point_inside(url, fake_services):
    with pytest.raises(FetchRefused, match="refused to fetch"):
        await fetch(url.format(port=fake_services.port))
    assert not [r for r in fake_services.requests if r["path"] == "/secret"]


@pytest.mark.parametrize(("url", "message"), [
    ("file:///etc/passwd", "only http and https"), ("ftp://example.com/x", "only http and https"),
    ("gopher://127.0.0.1:6379/_FLUSHALL", "only http and https"), ("/relative/path", "only http and https"),
    ("http://user:pass@example.com/", "credentials"), ("http:///nohost", "no host"),
])
async def test_it_refuses_other_schemes_and_odd_urls(url, message):
    with pytest.raises(FetchRefused, match=message):
        await fetch(url)


async def test_it_refuses_a_name_that_resolves_to_a_private_address(dns):
    records, _ = dns
    records["intranet.example.com"] = ["10.1.2.3"]
    records["sneaky.example.com"] = ["93.184.216.34", "127.0.0.1"]

    with pytest.raises(FetchRefused, match=r"10\.1\.2\.3 is a private address"):
        await fetch("http://intranet.example.com/admin")
    with pytest.raises(FetchRefused, match=r"127\.0\.0\.1 is a loopback address"):
        await fetch("https://sneaky.example.com/")


async def test_an_allowlisted_host_is_fetched_from_the_address_vetted_once(dns, knobs, fake_services):
    records, lookups = dns
    records["trusted.test"] = ["127.0.0.1"]  # a name no real DNS knows: only the pinned address can work
    knobs(FETCH_ALLOWED_HOSTS=["trusted.test"])

    page = await fetch(f"http://trusted.test:{fake_services.port}/page.html")

    assert b"Quarterly report" in page.data and page.content_type.startswith("text/html")
    assert lookups == ["trusted.test"]


def test_a_deprecated_site_local_address_is_refused_by_name():
    assert address_refusal("fec0::1") == "fec0::1 is a site-local address"


@pytest.mark.parametrize("allowed", ["bücher.test", "xn--bcher-kva.test"])
async def test_an_internationalised_host_is_vetted_and_fetched_under_its_punycode_name(
        dns, knobs, fake_services, allowed):
    records, lookups = dns
    records["xn--bcher-kva.test"] = ["127.0.0.1"]  # DNS only knows the ASCII form
    knobs(FETCH_ALLOWED_HOSTS=[allowed])

    page = await fetch(f"http://bücher.test:{fake_services.port}/page.html")

    assert b"Quarterly report" in page.data
    assert lookups == ["xn--bcher-kva.test"]


async def test_an_internationalised_host_resolving_to_a_private_address_is_refused(dns):
    records, _ = dns
    records["xn--bcher-kva.example"] = ["10.9.8.7"]

    with pytest.raises(FetchRefused, match=r"10\.9\.8\.7 is a private address"):
        await fetch("http://bücher.example/")


async def test_a_redirect_from_a_trusted_host_to_localhost_is_refused(dns, knobs, fake_services):
    records, _ = dns
    records["trusted.test"] = ["127.0.0.1"]
    records["localhost"] = ["127.0.0.1"]
    knobs(FETCH_ALLOWED_HOSTS=["trusted.test"])
    base = f"http://trusted.test:{fake_services.port}"

    for target in (f"http://127.0.0.1:{fake_services.port}/secret", f"http://localhost:{fake_services.port}/secret",
                   "http://169.254.169.254/latest/meta-data/"):
        with pytest.raises(FetchRefused, match="refused to fetch"):
            await fetch(f"{base}/redirect?to={target}")
    assert not [r for r in fake_services.requests if r["path"] == "/secret"]


async def test_redirects_are_followed_a_limited_number_of_times(dns, knobs, fake_services):
    records, _ = dns
    records["trusted.test"] = ["127.0.0.1"]
    knobs(FETCH_ALLOWED_HOSTS=["trusted.test"], FETCH_MAX_REDIRECTS=2)
    base = f"http://trusted.test:{fake_services.port}"

    followed = await fetch(f"{base}/redirect?to=/page.html")
    with pytest.raises(FetchRefused, match="more than 2 redirects"):
        await fetch(f"{base}/redirect?to=/redirect%3Fto%3D/redirect%253Fto%253D/page.html")

    assert followed.url.endswith("/page.html")


async def test_bodies_over_the_size_limit_and_slow_servers_are_cut_off(dns, knobs, fake_services):
    records, _ = dns
    records["trusted.test"] = ["127.0.0.1"]
    knobs(FETCH_ALLOWED_HOSTS=["trusted.test"], FETCH_MAX_BYTES=1024 * 1024, FETCH_TIMEOUT_S=1.0)
    base = f"http://trusted.test:{fake_services.port}"

    with pytest.raises(FetchRefused, match="larger than the 1048576-byte limit"):
        await fetch(f"{base}/big?mb=3")
    with pytest.raises(FetchRefused, match="took longer than 1 s"):
        await fetch(f"{base}/slow?s=5")


async def test_the_file_processing_tool_reports_a_refused_url_clearly(fake_services):
    result = await tool_invoke("file_processing", json.dumps(
        {"operation": "extract_text", "file_url": "http://169.254.169.254/latest/meta-data/iam"}),
        ToolContext("t", 1))

    assert not result.ok
    assert result.content == "error: refused to fetch 169.254.169.254: 169.254.169.254 is a cloud metadata address"
