"""``python -m bridge.worker``: one bridge worker process (see :mod:`bridge.worker.worker`)."""

from bridge.worker.worker import main

main()
