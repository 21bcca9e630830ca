"""Telling machine traffic from people: pure functions of a request's method, user agent, client
address and timing (no I/O).

Machine traffic is recorded (``events.machine``) but never counted as a person's open or click:

- image proxies that fetch the pixel without a person reading the email: Apple Mail Privacy
  Protection (bare ``Mozilla/5.0`` user agent, Apple's 17.0.0.0/8), GoogleImageProxy,
  YahooMailProxy and their published address ranges;
- link scanners: HEAD requests, security and preview agents, HTTP libraries, headless browsers,
  mail-security address ranges (Microsoft Exchange Online Protection), clicks within
  ``FAST_CLICK`` of delivery, and clicks next to a hit on the email's hidden honeypot link.

Each rule returns a short reason (stored in the event's data), or None for a person.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime, timedelta
from functools import lru_cache

# Nobody receives, opens, reads and clicks an email this fast; a scanner at the recipient's
# mail server does.
FAST_CLICK = timedelta(seconds=10)
# Scanners follow every link of an email at once: clicks this close to a honeypot hit are theirs.
HONEYPOT_WINDOW = timedelta(seconds=30)

# Apple Mail Privacy Protection fetches with exactly this agent.
_APPLE_MPP_AGENT = "Mozilla/5.0"
_PROXY_AGENTS = re.compile(r"GoogleImageProxy|YahooMailProxy|ggpht\.com", re.IGNORECASE)
_SCANNER_AGENTS = re.compile(
    r"bot\b|bot/|crawl|spider|slurp|scan|preview|proofpoint|mimecast|barracuda|symantec"
    r"|messagelabs|trendmicro|forcepoint|fireeye|ironport|cisco|safelinks|sophos|zscaler"
    r"|python|curl/|wget|go-http-client|okhttp|java/|libwww|httpclient|axios|node-fetch"
    r"|headless|phantomjs|facebookexternalhit|whatsapp|slack|discord|telegram|skypeuri",
    re.IGNORECASE,
)
_PROXY_NETWORKS = (
    ("apple-mpp", "17.0.0.0/8"),
    ("google-proxy", "66.102.0.0/20"),
    ("google-proxy", "66.249.64.0/19"),
)
_SCANNER_NETWORKS = (
    ("mail-security", "40.92.0.0/15"),
    ("mail-security", "40.107.0.0/16"),
    ("mail-security", "52.100.0.0/14"),
    ("mail-security", "104.47.0.0/17"),
)
_NETWORKS = tuple(
    (reason, ipaddress.ip_network(cidr)) for reason, cidr in _PROXY_NETWORKS + _SCANNER_NETWORKS
)


@lru_cache(maxsize=4096)
def _network_of(address: str) -> str | None:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    for reason, network in _NETWORKS:
        if ip.version == network.version and ip in network:
            return reason
    return None


@lru_cache(maxsize=4096)
def _agent(user_agent: str) -> str | None:
    if not user_agent.strip():
        return "no-user-agent"
    if user_agent.strip() == _APPLE_MPP_AGENT:
        return "apple-mpp"
    if _PROXY_AGENTS.search(user_agent):
        return "image-proxy"
    if _SCANNER_AGENTS.search(user_agent):
        return "scanner-agent"
    return None


def classify_request(method: str, user_agent: str | None, client: str | None) -> str | None:
    """Why a request is machine traffic, or None when it may be a person.

    >>> classify_request("GET", "GoogleImageProxy", "8.8.8.8")
    'image-proxy'
    >>> classify_request("HEAD", "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0", None)
    'head-request'
    """
    if method == "HEAD":
        return "head-request"
    reason = _agent(user_agent or "")
    if reason is None and client:
        reason = _network_of(client)
    return reason


def classify_click(
    at: datetime, sent_at: datetime | None, honeypot_hits: list[datetime]
) -> str | None:
    """Why a click that looked human is a scanner's after all, given the email's delivery time
    and the times its honeypot link was requested; None for a person."""
    if sent_at is not None and timedelta(0) <= at - sent_at < FAST_CLICK:
        return "fast-click"
    if any(abs(at - hit) <= HONEYPOT_WINDOW for hit in honeypot_hits):
        return "near-honeypot"
    return None
