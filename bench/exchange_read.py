"""Exchange Online read benchmark: the adapter (shared/sources/exchange.py) paging a tenant's
recipients from the Exchange emulator on loopback, then the directory cache taking the
complete read (``Cache.apply_recipients``) the first time (every recipient new) and again
unchanged (what every delta run does, since Exchange has no delta). Prints a table; it is not
a timed test, and on a shared machine only ratios within one run are comparable.

    .venv/bin/python bench/exchange_read.py --recipients 20000
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sqlite3
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devstack.exchange_emulator import ExchangeEmulator, recipient  # noqa: E402
from shared.config.settings import EXO_ALL_TYPES  # noqa: E402
from shared.model.directory import SCHEMA, Affected, Cache  # noqa: E402
from shared.sources.exchange import ExchangeSource  # noqa: E402

TENANT = "11111111-2222-3333-4444-555555555555"
PROVISIONED = frozenset({"contoso.com", "fabrikam.com"})


def tenant(n: int) -> list[dict]:
    out = []
    for i in range(n):
        kind = EXO_ALL_TYPES[i % len(EXO_ALL_TYPES)]
        primary = f"r{i}@{'contoso.com' if i % 3 else 'fabrikam.com'}"
        out.append(recipient(f"e0000000-0000-4000-8000-{i:012d}", kind, primary,
                             emails=[f"SMTP:{primary}", f"smtp:alias{i}@contoso.com", f"X500:/o=ExchangeLabs/cn={i}"]))
    return out


async def read(base_url: str) -> tuple[list[dict], ExchangeSource]:
    src = ExchangeSource(base_url, TENANT, EXO_ALL_TYPES, token=None)
    try:
        return await src.read_recipients(), src
    finally:
        await src.aclose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=20000)
    args = parser.parse_args()
    with ExchangeEmulator(tenant(args.recipients), tenant=TENANT) as emu:
        t0 = time.perf_counter()
        recipients, src = asyncio.run(read(emu.base_url))
        t_read = time.perf_counter() - t0
    conn = sqlite3.connect(":memory:")
    conn.executescript(SCHEMA)
    cache = Cache(conn, PROVISIONED)
    t0 = time.perf_counter()
    first = Affected()
    cache.apply_recipients(recipients, first)
    t_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = Affected()
    cache.apply_recipients(recipients, again)
    t_again = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"recipients                      {len(recipients):>10}")
    print(f"InvokeCommand requests (pages)  {src.stats.requests:>10}")
    print(f"read, seconds                   {t_read:>10.2f}   ({len(recipients) / t_read:,.0f} recipients/s)")
    print(f"cache, first read, seconds      {t_first:>10.2f}   ({len(first.addresses)} addresses affected)")
    print(f"cache, unchanged read, seconds  {t_again:>10.2f}   ({len(again.addresses)} addresses affected)")
    print(f"peak RSS, MB                    {rss:>10.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
