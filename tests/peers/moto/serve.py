"""moto in server mode (PyPI `moto[server]`), with its request handling serialised.

Why not plain `moto_server`: moto applies a DynamoDB conditional write as read, check, write, with no lock
between them, while its server handles requests on many threads. Two `UpdateItem ... IF version = :seen` calls
that arrive together can then both succeed, which real DynamoDB never allows (seen here: a lease taken twice,
two refreshes, a broken chain, under CPU load). chainkeeper's whole promise rests on that atomicity, so the
tests need a stand-in that keeps it: this is moto's own server (`moto.server.main`, same app, same threaded
HTTP server) with one request applied at a time. Everything else is moto as published.

    python3 tests/peers/moto/serve.py -H 127.0.0.1 -p PORT
"""

import argparse
import os
import threading

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple


class OneAtATime:
    """A WSGI wrapper that lets one request at a time reach moto (reading the whole answer inside the lock)."""

    def __init__(self, app):
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        with self.lock:
            return list(self.app(environ, start_response))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    args = parser.parse_args()
    os.environ.setdefault("MOTO_PORT", str(args.port))
    app = DomainDispatcherApplication(create_backend_app)
    app.debug = True
    run_simple(args.host, args.port, OneAtATime(app), threaded=True)


if __name__ == "__main__":
    main()
