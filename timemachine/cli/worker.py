"""``timemachine worker``: run the jobs that the UI and ``--broker`` commands send through Redis."""

from __future__ import annotations

import argparse

from timemachine.cli import EXIT_FAILED_CHECK, EXIT_OK
from timemachine.env import ENV_BROKER_URL, Environment
from timemachine.errors import TimemachineError
from timemachine.settings import QueueSettings

QUEUE = QueueSettings()
HELP = "run queued jobs (projections, videos, vector builds) sent through Redis by the UI or --broker"
DESCRIPTION = f"""\
A queue worker: takes jobs from the Redis broker (--broker or ${ENV_BROKER_URL}) one at a time and runs them
with the models and the home directory (TIMEMACHINE_HOME) it shares with the UI and the other workers.
Models and VGG16 are loaded once and kept for the next job.  Results are written into the shared stores, so a
repeated request is answered from them by any worker.

Start as many workers as you have GPUs (or CPU workers as the machine allows):

  TIMEMACHINE_BROKER_URL=redis://localhost:6379/0 timemachine worker --device cuda:0
  TIMEMACHINE_BROKER_URL=redis://localhost:6379/0 timemachine worker --device cuda:1

A job is acknowledged only when it has finished: if a worker dies, its job is given to another one (at once
when the job's process dies; after --visibility-timeout seconds when the whole worker vanishes, so that must
be longer than your longest job).  SIGTERM finishes the running job, then stops.

Redis must be reachable by the UI and the workers only, never by visitors (see the README).
"""


def register(subparsers, formatter) -> None:
    parser = subparsers.add_parser("worker", help=HELP, description=DESCRIPTION, formatter_class=formatter)
    parser.add_argument("--broker", metavar="URL", default=None,
                        help=f"Redis URL, redis://host:port/db (default: ${ENV_BROKER_URL})")
    parser.add_argument("--name", default=None,
                        help="this worker's name (unique per host; default: its process id)")
    parser.add_argument("--device", default=None, help="'cpu', 'cuda' or 'cuda:N' (default: auto)")
    parser.add_argument("--visibility-timeout", type=float, default=QUEUE.visibility_timeout, metavar="SECONDS",
                        help="hand a job whose worker vanished to another worker after this long")
    parser.add_argument("--loglevel", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--check", action="store_true",
                        help="do not work: exit 0 if the worker --name on this host answers (a health check)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from timemachine.pipeline.executor_celery import ping_worker, run_worker

    env = Environment.from_environ()
    if args.broker:
        env = env.replace(broker_url=args.broker)
    if not env.broker_url:
        raise TimemachineError(f"no broker: pass --broker redis://host:port/db or set {ENV_BROKER_URL}")
    settings = QueueSettings(visibility_timeout=args.visibility_timeout,
                             job_ttl=max(QUEUE.job_ttl, args.visibility_timeout))
    settings.validate()
    if args.check:
        return EXIT_OK if ping_worker(env, args.name) else EXIT_FAILED_CHECK
    return run_worker(env, settings, name=args.name, device=args.device, loglevel=args.loglevel)
