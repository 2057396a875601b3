"""Lambda sizing: peak memory and duration of one cold invocation of each load-dependent function.

Each measurement is a FRESH Python process that imports `app` and calls the handler the way a
cold Lambda container does (the handler string app.<name>, a Lambda-shaped event and context),
against a moto server (`python -m prism.dev.moto_server`) seeded with:

- MeterTick: N billable (+ M stopped) deployments, one tick;
- MeterWorker: the largest batch the SQS trigger delivers (10 messages of 100 deployments), then
  the rest of the queue in the same warm process (the whole drain, and whether memory grows);
- CheckCloudHealth (the tick) / HealthWorker (one message) / ReapCloud: K running RunPod
  deployments with their pods on the fake RunPod
  (prism/dev/fakes), their endpoints on one local HTTP server that answers every path;
- APIHandler: a list page (limit 100) of an owner with L deployments, and a create;
- SweepNodes with no nodes: what any handler adds to the import by making its AWS clients.

Peak RSS is ru_maxrss after the handler returns; "import-only" is ru_maxrss right after
`import app` (the RSS then: an import only grows), so the difference is the handler's own cost.
Durations include moto's own slowness (it walks a whole table for an index Query); the cpu
column is the function's own work, the figure to scale by Lambda's CPU share. Prints a table
with the recommended MemorySize and Timeout; --write puts them in infra/sizing.json. The full
sizes take ~3-4 minutes on 2 cores, --quick ~15 s.

    .venv/bin/python benchmarks/lambda_sizing.py [--quick] [--write]

The parts, beside this entry point: lambda_sizing_harness.py (the child invocation, the servers),
lambda_sizing_scenarios.py (the seeding and measurements), lambda_sizing_recommend.py (the
figures, the table, infra/sizing.json).
"""

import argparse
import tempfile
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

from lambda_sizing_harness import Runner, invoke_like_lambda, start_moto
from lambda_sizing_recommend import SIZING_FILE, print_table, recommend, write_sizing
from lambda_sizing_scenarios import FULL, QUICK, run_scenarios


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"small sizes: {QUICK}")
    for name in ("billable", "stopped", "cloud", "listed"):
        parser.add_argument(f"--{name}", type=int, help=f"override the size (full: {FULL})")
    parser.add_argument("--write", action="store_true", help=f"write {SIZING_FILE.name}")
    parser.add_argument("--invoke", help=argparse.SUPPRESS)  # the child: a handler name
    parser.add_argument("--events", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.invoke:
        invoke_like_lambda(args.invoke, args.events, args.result)
        return
    sizes = QUICK if args.quick else FULL
    overrides = {k: getattr(args, k) for k in vars(FULL) if getattr(args, k) is not None}
    sizes = replace(sizes, **overrides)
    if args.write and sizes != FULL:
        raise SystemExit(f"--write records the full sizes only ({FULL})")
    workdir = Path(tempfile.mkdtemp(prefix="lambda-sizing-"))
    runner = Runner(workdir)  # first, while this process is small: see harness's SPAWNER
    started = time.perf_counter()
    moto, aws_url = start_moto()
    try:
        rows = run_scenarios(runner, aws_url, sizes)
    finally:
        runner.close()
        moto.terminate()
        moto.wait()
    recommendations = recommend(rows, date.today().isoformat())
    print_table(rows, recommendations)
    print(f"\ntotal {time.perf_counter() - started:.0f} s; the children's logs are in {workdir}")
    if args.write:
        write_sizing(recommendations, SIZING_FILE)


if __name__ == "__main__":
    main()
