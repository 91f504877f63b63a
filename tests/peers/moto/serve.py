"""moto in server mode (PyPI `moto[server]`), with its request handling serialised.

Why not plain `moto_server`: moto applies a DynamoDB conditional write as read, check, write, with no lock
between them, while its server handles requests on many threads. Two `UpdateItem ... IF version = :seen` calls
that arrive together can then both succeed, which real DynamoDB never allows (seen here: a lease taken twice,
two refreshes, a broken chain, under CPU load). chainkeeper's whole promise rests on that atomicity, so the
tests need a stand-in that keeps it: this is moto's own server (`moto.server.main`, same app, same threaded
HTTP server) with one request applied at a time. Everything else is moto as published.

    python3 tests/peers/moto/serve.py -H 127.0.0.1 [-p PORT]

With `-p 0` (the default) the system picks a free port and the first line on stdout is `port N`: the tests use
that, because a port picked beforehand and released can be taken by another test's peer before moto binds it
(seen once in CI: a test talked to another test's moto).
"""

import argparse
import os
import threading

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server


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
    parser.add_argument("-p", "--port", type=int, default=0)
    args = parser.parse_args()
    app = DomainDispatcherApplication(create_backend_app)
    app.debug = True
    server = make_server(args.host, args.port, OneAtATime(app), threaded=True)
    port = server.socket.getsockname()[1]
    os.environ.setdefault("MOTO_PORT", str(port))
    print(f"port {port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
