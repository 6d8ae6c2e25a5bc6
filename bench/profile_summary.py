"""Shares of a py-spy raw profile (`py-spy record -f raw`), by function: self and inclusive, and by thread root.

python bench/profile_summary.py /tmp/gw.txt [self rows, 40] [inclusive rows, 70]
"""

from __future__ import annotations

import collections
import re
import sys
from pathlib import Path

FRAME = re.compile(r"(.*) \((.*?):\d+\)")


def name(frame: str) -> str:
    match = FRAME.match(frame)
    if match is None:
        return frame
    return f"{match.group(1)} ({match.group(2).split('site-packages/')[-1].removeprefix(str(Path.cwd()) + '/')})"


def main(path: str, self_rows: int = 40, inclusive_rows: int = 70) -> None:
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in Path(path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = stack.split(";")
        threads[frames[0][:60]] += n
        total += n
        names = [name(f) for f in frames[1:]]
        if names:
            own[names[-1]] += n
        for each in set(names):
            inclusive[each] += n
    print("samples", total)
    for thread, n in threads.most_common(8):
        print(f"  thread {n / total:6.1%} {thread}")
    print("--- self")
    for each, n in own.most_common(self_rows):
        print(f"{n / total:6.1%} {each}")
    print("--- inclusive")
    for each, n in inclusive.most_common(inclusive_rows):
        print(f"{n / total:6.1%} {each}")


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:4]))
