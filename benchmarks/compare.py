"""aqueue against arq, SAQ and taskiq: the same scenarios, the same servers, one run.

    python benchmarks/compare.py [--systems aqueue-redis,arq,saq,taskiq-redis,aqueue-amqp,
                                  taskiq-aio-pika] [--quick] [--repeat R]

The entry point only: the benchmark is the `comparing` package next to this file (its
docstring says how each figure is taken, and which module holds what). This file is also what
the benchmark's child processes run (`--worker`, `--producer`, `--versions`), each in its
system's own environment.
"""

from __future__ import annotations

import sys

from comparing.cli import entry

if __name__ == "__main__":
    entry(sys.argv[1:])
