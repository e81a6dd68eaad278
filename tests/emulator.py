"""moto server with every request handled one at a time.

DynamoDB applies a conditional write or a transaction atomically; moto's
threaded server does not (two concurrent TransactWriteItems can both pass
their conditions). Serializing requests under one lock restores the
atomicity the allocator relies on, while keeping HTTP/1.1 keep-alive
connections from many clients. Run as: python tests/emulator.py HOST PORT
"""

import signal
import sys
import threading

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import run_simple


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()

    def serialized(environ, start_response):
        with lock:
            # Drain the body inside the lock: moto builds responses lazily.
            return [b"".join(app(environ, start_response))]

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    run_simple(host, port, serialized, threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
