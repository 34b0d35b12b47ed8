"""Which addresses a process tree listens on, read from /proc (Linux): to check that servers bind 127.0.0.1."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from helpers.procs import descendants

LISTEN = "0A"  # the TCP state column of /proc/net/tcp


def _address(hex_ip: str) -> str:
    raw = bytes.fromhex(hex_ip)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))  # /proc prints each 32-bit word little-endian
    address = ipaddress.IPv6Address(words)
    return str(address.ipv4_mapped or address)


def listening_addresses(root: int | None = None) -> dict[int, set[str]]:
    """pid → the IP addresses its TCP sockets listen on, for ``root`` (default: this process) and every descendant."""
    inodes = {}
    for name in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{name}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == LISTEN:
                inodes[fields[9]] = _address(fields[1].split(":")[0])
    out: dict[int, set[str]] = {}
    for pid in descendants(root or os.getpid()):
        try:
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        found = {inodes[link[8:-1]] for link in links if link.startswith("socket:[") and link[8:-1] in inodes}
        if found:
            out[pid] = found
    return out
