"""Scheduler stand-in: publish `{"source":"scheduler"}` to the poll topic every N seconds.

In production Cloud Scheduler publishes this message; locally this loop does, through the
official Pub/Sub client (which talks to the emulator when PUBSUB_EMULATOR_HOST is set).
The poll function fans each tick out as it does in production: one `{"job_id": ...}`
message per active job on the same topic, pushed back to it by the emulator.

    python -m batchline_tools.local.ticker --project P --topic T --every S
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from types import FrameType

log = logging.getLogger("batchline_tools.local.ticker")

TICK_MESSAGE = {"source": "scheduler"}


def run(project: str, topic: str, every: float, *, stop: threading.Event, count: int = 0) -> int:
    """Publish one tick now and then one every `every` seconds until `stop` is set.

    `count` > 0 stops after that many ticks. Returns the number of ticks published.
    """
    from google.cloud.pubsub_v1 import PublisherClient

    publisher = PublisherClient()
    topic_path = publisher.topic_path(project, topic)
    data = json.dumps(TICK_MESSAGE).encode()
    published = 0
    while not stop.is_set():
        try:
            message_id = publisher.publish(topic_path, data).result(timeout=30)
            published += 1
            log.info("tick %d published to %s as %s", published, topic_path, message_id)
        except Exception as exc:  # keep ticking: a scheduler does not give up on one failure
            log.warning("tick to %s failed: %s", topic_path, exc)
        if count and published >= count:
            break
        stop.wait(every)
    return published


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m batchline_tools.local.ticker", description=__doc__
    )
    parser.add_argument("--project", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--every", type=float, default=60.0, help="seconds between ticks")
    parser.add_argument("--count", type=int, default=0, help="stop after this many ticks")
    args = parser.parse_args(argv)
    if args.every <= 0:
        parser.error("--every must be positive")
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    run(args.project, args.topic, args.every, stop=stop, count=args.count)
    return 0


if __name__ == "__main__":
    sys.exit(main())
