"""Runs a command with its address space capped and on given CPUs:
``python limited.py LIMITS COMMAND ARG...``, LIMITS a JSON object with ``address_space`` (bytes)
and ``cpus`` (a list), either null. The limits are set, then the command replaces this process.

It stands in for a ``preexec_fn``: a test process holds gRPC's threads, and a fork that runs
Python code in the child (what ``preexec_fn`` needs) runs gRPC's fork handlers in the parent,
which can wait forever for those threads.
"""

from __future__ import annotations

import json
import os
import resource
import sys


def main() -> None:
    limits = json.loads(sys.argv[1])
    if limits["address_space"] is not None:
        resource.setrlimit(resource.RLIMIT_AS, (limits["address_space"], limits["address_space"]))
    if limits["cpus"] is not None:
        os.sched_setaffinity(0, limits["cpus"])
    os.execv(sys.argv[2], sys.argv[2:])


if __name__ == "__main__":
    main()
