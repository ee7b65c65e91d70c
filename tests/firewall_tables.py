"""iptables-save's output as tables to compare: what a firewall *is*, apart from the
order its chains were created in and the packet counters (both differ between two
ways of loading the same rules, and counters between two moments)."""

from __future__ import annotations

import re

Tables = dict[str, dict[str, tuple[str, tuple[str, ...]]]]


def tables(saved: str) -> Tables:
    """{table: {chain: (policy, its rules in order)}}; comments and counters dropped.
    A user chain's policy is "-"."""
    found: Tables = {}
    chains: dict[str, list[str]] = {}
    policies: dict[str, str] = {}
    table = ""
    for line in saved.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            table, chains, policies = line[1:], {}, {}
        elif line.startswith(":"):
            name, policy = line[1:].split()[:2]
            policies[name] = policy
            chains.setdefault(name, [])
        elif line.startswith("-A "):
            chains.setdefault(line.split()[1], []).append(re.sub(r"^\[\d+:\d+\] ", "", line))
        elif line == "COMMIT":
            found[table] = {c: (policies.get(c, "?"), tuple(r)) for c, r in chains.items()}
        else:
            raise ValueError(f"not an iptables-save line: {line!r}")
    return found


def without(found: Tables, prefix: str) -> Tables:
    """`found` without the chains named `prefix`* and every jump into them (another
    program's own rules, such as fail2ban's f2b-*)."""
    return {
        table: {
            chain: (policy, tuple(r for r in rules if f"-j {prefix}" not in r))
            for chain, (policy, rules) in chains.items()
            if not chain.startswith(prefix)
        }
        for table, chains in found.items()
    }
