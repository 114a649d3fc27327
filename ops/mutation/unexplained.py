"""Survivors of the last `make mutation` that ops/mutation/equivalent.md does not name, and names in
its table that no longer survive. Run from the repository after `make mutation` (or a re-run):

    .venv-mutation/bin/python ops/mutation/unexplained.py

The table names a function's mutants as `module.x_function` or `Class.method`, then their numbers
(17/20/22, ranges 10–13), as mutmut numbers them in `mutants/`. Exits 1 when the two differ.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

from mutmut.stats import status_by_exit_code

TABLE = Path("ops/mutation/equivalent.md")
MUTANTS = Path("mutants")
NAMED = re.compile(r"`([A-Za-z_][\wǁ.]*)`\s*([0-9][0-9/,–\- ]*)")


def named_in_table(text: str) -> set[tuple[str, int]]:
    table = text.split("## Equivalent", 1)[1].split("\n## ", 1)[0]
    found: set[tuple[str, int]] = set()
    for row in table.splitlines():
        if not row.startswith("| ") or row.startswith("| Mutants"):
            continue
        for name, numbers in NAMED.findall(row.split(" | ")[0]):
            for part in filter(None, (p.strip() for p in re.split(r"[/,]", numbers))):
                low, _, high = part.replace("–", "-").partition("-")
                found.update((name, n) for n in range(int(low), int(high or low) + 1))
    return found


def doc_name(key: str, module: str) -> tuple[str, int]:
    """`projections.meters.x_apply__mutmut_17` -> ("meters.x_apply", 17); methods -> ("Class.method", n)."""
    function, number = key.rsplit("__mutmut_", 1)
    last = function.split(".")[-1]
    name = ".".join(last.split("ǁ")[1:3]) if last.startswith("xǁ") else f"{module}.{last}"
    return name, int(number)


def main() -> int:
    statuses: Counter[str] = Counter()
    survivors: set[tuple[str, int]] = set()
    for meta in sorted(MUTANTS.rglob("*.meta")):
        module = meta.name.removesuffix(".py.meta")
        for key, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            status = "not run" if code is None else status_by_exit_code[code]
            statuses[status] += 1
            if status in ("survived", "no tests"):
                survivors.add(doc_name(key, module))
    named = named_in_table(TABLE.read_text())
    print(dict(statuses))
    for title, names in (("survivors not in the table", survivors - named), ("in the table, not surviving", named - survivors)):
        by_function: defaultdict[str, list[int]] = defaultdict(list)
        for name, number in names:
            by_function[name].append(number)
        print(f"{title}: {len(names)}")
        for name, numbers in sorted(by_function.items()):
            print(f"  {name} {'/'.join(map(str, sorted(numbers)))}")
    return 1 if survivors != named else 0


if __name__ == "__main__":
    sys.exit(main())
