"""Fail unless the upstream-tests report (the output of ../shared/upstream-tests/run.sh) lists no regression
besides the `--allow`ed test names, and the run reached its summary line."""

import argparse
import re
import sys

parser = argparse.ArgumentParser()
parser.add_argument("log")
parser.add_argument("--allow", action="append", default=[])
args = parser.parse_args()
text = open(args.log, encoding="utf-8").read()
summary = re.search(r"^(\d+) upstream tests pass on the stock classes and fail on the Pruned ones", text, re.M)
if summary is None:
    sys.exit(f"{args.log}: no summary line; the upstream run did not finish")
listed = re.findall(r"^\s+\w+: (\S+)$", text, re.M)
unexpected = [name for name in listed if name not in args.allow]
if len(listed) != int(summary.group(1)) or unexpected:
    sys.exit(f"upstream regressions: {unexpected or listed} (allowed: {args.allow})")
print(f"upstream: {len(listed)} regression(s), all allowed: {listed}")
