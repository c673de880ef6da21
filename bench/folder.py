"""Does the watcher's memory follow the trigger folder's size, or time?

Runs ``python -m watcher`` with a full reconcile every second against a real git
repository and the embedded Redis-compatible server. The trigger folder grows in steps
(--step files per commit, up to --files); at each size the watcher is left to make
--passes full passes with nothing new, and its RSS is sampled before and after them.

    .venv/bin/python bench/folder.py [--files 10000] [--step 2000] [--passes 30]

If memory leaked with time, RSS would rise during the idle passes at every size; if it
follows the folder, it steps up with each commit and stays put in between.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.detect import git, running_watcher, wait_for_job, write_trigger
from triggers import trigger_id


def rss_mib(process: psutil.Process) -> float:
    return process.memory_info().rss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--step", type=int, default=2_000)
    parser.add_argument("--passes", type=int, default=30, help="idle full passes per size")
    args = parser.parse_args()
    with running_watcher("folder-bench-", "--reconcile-interval", "1") as bench:
        repo, client = bench.repo, bench.client
        process = psutil.Process(bench.watcher.pid)
        print(f"{0:>6} files: RSS {rss_mib(process):5.1f} MiB")
        for size in range(args.step, args.files + 1, args.step):
            for number in range(size - args.step, size):
                last = write_trigger(repo, bench.sha, number)
            git(repo, "add", "-A")
            git(repo, "commit", "-q", "-m", f"triggers up to {size}")
            wait_for_job(client, trigger_id(last, git(repo, "rev-parse", f"HEAD:{last}")))
            time.sleep(2)  # the pass that enqueued them, and one more, are over
            before = rss_mib(process)
            time.sleep(args.passes)
            after = rss_mib(process)
            print(
                f"{size:>6} files: RSS {before:5.1f} MiB, after {args.passes} more "
                f"full passes {after:5.1f} MiB ({after - before:+.1f})"
            )


if __name__ == "__main__":
    main()
