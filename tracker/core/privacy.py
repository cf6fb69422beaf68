"""Client IP addresses, cut down to the network they came from before they are stored.

An IP address identifies a household or a device and is personal data; a journey needs at most the
rough place a customer was, which the network prefix still gives.
"""

from __future__ import annotations

import functools
import ipaddress

IPV4_PREFIX = 24  # the last octet zeroed
IPV6_PREFIX = 48  # the site prefix an ISP hands out; the rest is the customer's own


@functools.lru_cache(maxsize=4096)  # a batch repeats its sender's address in every message
def anonymize_ip(value: str) -> str | None:
    """``203.0.113.77`` -> ``203.0.113.0``, ``2001:db8:1:2::5`` -> ``2001:db8:1::``.

    An IPv4 address mapped into IPv6 is cut as IPv4. A value that is not an IP address gives
    ``None``: it cannot be cut down, so it must not be stored.
    """
    try:
        address = ipaddress.ip_address(value.strip().split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    prefix = IPV4_PREFIX if address.version == 4 else IPV6_PREFIX
    network = ipaddress.ip_network(f"{address}/{prefix}", strict=False)
    return str(network.network_address)
