"""aqueue against arq, SAQ and taskiq: the same scenarios, the same servers, one run.

    python benchmarks/compare.py [--systems aqueue-redis,arq,saq,taskiq-redis,aqueue-amqp,
                                  taskiq-aio-pika] [--quick] [--repeat R]

Each project is installed into a virtual environment of the benchmark's own, under
`benchmarks/.venv-peers/` (one per project, as they pin redis-py differently; aqueue from this
checkout, editable), made on the first run; the script then re-executes itself under aqueue's.
Nothing is installed anywhere else.

Every system runs ONE worker process (its own worker class, in a small harness that counts
completions in memory) and one producer process, on the same Redis (a database the benchmark
owns, 14 by default, flushed before and after every run) or the same RabbitMQ (a vhost of the
benchmark's own, deleted at the end). Each drain figure is taken the same way for every system:

  1. a producer process pre-enqueues N tasks (the enqueue rate is measured here);
  2. the worker process starts;
  3. the clock runs from the first task started to the N-th task finished, both stamped inside
     the worker process (time.monotonic()); the worker reports its count every 1,000
     completions on a pipe, so the benchmark adds no broker round trip per task;
  4. the worker is killed and the server cleaned.

Scenarios:
  S1  20,000 pre-enqueued no-op tasks, drain rate, results off and results on;
  S2  5,000 tasks that each `await asyncio.sleep(0.01)`, concurrency 500, drain rate;
  S3  200 sequential round trips (enqueue, then wait for the result) against a running worker,
      p50 and p99 latency;
  enqueue rate, one call at a time (measured while pre-enqueueing S1 with results off) and with
      the system's own bulk API (while pre-enqueueing S1 with results on), where it has one.

Each figure is the median of R runs (3 by default; `--quick`: 1 run with smaller N). Results go
to stdout and to benchmarks/results-compare.md. See benchmarks/README.md for how to read them.

The code, by module (`benchmarks/compare.py` is only the entry point):

  systems   the systems, their event loops, their virtual environments and versions
  peers/    one adapter per project (aqueue, arq, saq, taskiq, streaq, docket): its worker and
            its producer; `peers/__init__` maps each system to its adapter
  common    what the adapters share: the completion tally, the task bodies, the base producer
  harness   the two child processes (`compare.py --worker/--producer/--versions`)
  places    the Redis database and the RabbitMQ vhost the benchmark owns
  driver    the scenarios: runs, worker and producer processes, timing, medians
  report    the markdown tables and the notes under them
  cli       the command line and the whole run
"""
