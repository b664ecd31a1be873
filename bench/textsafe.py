"""What escaping and bounding outside text costs (issue 14): ``RunSummary.sanitize`` over a
test-update preview of N records (every record's strings through ``shared/common/textsafe.py``), and
``safe_text`` over a hostile 20 MB string. Prints numbers; not a timed test.

    .venv/bin/python bench/textsafe.py --records 100000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.common.summary import RunSummary  # noqa: E402
from shared.common.textsafe import safe_text  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=100_000)
    n = parser.parse_args().records
    summary = RunSummary("test-update")
    summary.extra["changes"] = {
        "addresses": {"added": [{"address": f"user{i}@contoso.com"} for i in range(n)], "removed": []},
        "users": {"added": [{"id": f"{i:08d}-0000-0000-0000-000000000000", "address": f"user{i}@contoso.com", "groupIds": [f"g{i % 50}"]}
                            for i in range(n)], "removed": []},
    }
    started = time.perf_counter()
    summary.sanitize()
    took = time.perf_counter() - started
    strings = 4 * n
    print(f"sanitize: {n:,} records per dataset ({strings:,} strings): {took:.3f} s, {1e6 * took / strings:.2f} µs per string")
    hostile = "x" * (20 * 1024 * 1024) + "\n\x1b[2J"
    started = time.perf_counter()
    out = safe_text(hostile)
    print(f"safe_text: 20 MiB hostile string -> {len(out)} characters in {1e3 * (time.perf_counter() - started):.2f} ms")


if __name__ == "__main__":
    main()
