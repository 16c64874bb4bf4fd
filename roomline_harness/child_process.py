"""A scripted child process for tests/roomline/test_process.py: ``python -m roomline_harness.child_process``.

--log          configure_worker_logging("test-child"), then one structlog event, one stdlib
               %-format record, one plain line straight to stderr and one to stdout
--write-fd N   write b"hello" to inherited fd N
--ignore-term  ignore SIGTERM (the supervisor must SIGKILL)
--sleep S      sleep S seconds before exiting
--exit N       exit code
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time

from roomline.log import configure_worker_logging, get_logger


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--log", action="store_true")
    ap.add_argument("--write-fd", type=int)
    ap.add_argument("--ignore-term", action="store_true")
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--exit", type=int, default=0)
    args = ap.parse_args()
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.log:
        configure_worker_logging("test-child")
        get_logger("child.structlog").info("child event", answer=42)
        logging.getLogger("child.stdlib").warning("stdlib says %s", "hi")
        sys.stderr.write("plain text from a C library\n")
        sys.stderr.flush()
        print("pjsua console line", flush=True)
    if args.write_fd is not None:
        os.write(args.write_fd, b"hello")
        os.close(args.write_fd)
    time.sleep(args.sleep)
    return int(args.exit)


if __name__ == "__main__":
    sys.exit(main())
