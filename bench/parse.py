"""Parsed-and-validated triggers per second on one core.

    python bench/parse.py [--seconds 5]

Goal (issue 2): at least 1,500 triggers per second. The inputs cycle through the
canonical example, a liberal variant (bold keys, CRLF, extra sections) and a file with
several errors, so the figure covers the error path too.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

from triggers import parse_trigger

CANONICAL = """\
## Trigger: ChaosArchitect Architecture Update

### Changes
- New monitoring configuration
- Updated resource limits

### Environment
Target: production

### Approval
Status: approved
Approved-by: human-merge

### Deployment ID
SHA: abc123def4567890abc123def4567890abc12345
Timestamp: 2026-01-18T12:00:00Z

### Rollout
Steps: 10, 25, 50
Analysis-Interval: 60s
"""
LIBERAL = (
    CANONICAL.replace("Status:", "**Status:**").replace("\n", "\r\n") + "\r\n### Notes\r\nhi\r\n"
)
BROKEN = CANONICAL.replace("production", "prod").replace("Z\n", "\n").replace("Status", "Stat")
INPUTS = [text.encode() for text in (CANONICAL, LIBERAL, BROKEN)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core

    for data in INPUTS:  # warm up, and prove the inputs behave as labelled
        parse_trigger(data, "bench.md")
    assert parse_trigger(INPUTS[0]).valid and parse_trigger(INPUTS[1]).valid
    assert not parse_trigger(INPUTS[2]).valid

    count, start, cpu_start = 0, time.perf_counter(), time.process_time()
    deadline = start + args.seconds
    while time.perf_counter() < deadline:
        for data in INPUTS:
            parse_trigger(data, "bench.md")
        count += len(INPUTS)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start

    # CPU time is the figure for "one core": wall time also counts whatever else the
    # machine ran meanwhile. Both are printed; on an idle machine they agree.
    rate, wall_rate = count / cpu, count / elapsed
    machine = f"{platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}"
    print(f"machine: {machine}, load average {os.getloadavg()[0]:.2f}")
    print(f"parsed and validated {count} triggers: {cpu:.2f} s CPU, {elapsed:.2f} s wall")
    print(f"rate: {rate:,.0f} triggers/s per core of CPU ({wall_rate:,.0f}/s wall)")
    print(f"goal >= 1,500/s: {'PASS' if rate >= 1500 else 'FAIL'}")


if __name__ == "__main__":
    main()
