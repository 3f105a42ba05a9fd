"""moto's server mode, as `moto_server -H HOST -p PORT` runs it, with one difference: DynamoDB
requests are handled one at a time.

moto's threaded server evaluates a conditional write's condition and then writes, with other
requests free to run in between; DynamoDB itself applies a conditional write (and a
TransactWriteItems) atomically. Botline's leases and shared rate limits rest on exactly that, so
the tests run against this server (crates/botline-aws/tests/common/mod.rs). Other services keep
running concurrently: an SQS long poll must not hold up the rest.
"""

import argparse
import threading

from werkzeug.serving import run_simple

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)


class DynamoDbOneAtATime:
    def __init__(self, app):
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        if not target.startswith("DynamoDB_"):
            return self.app(environ, start_response)
        with self.lock:
            # The whole body is produced under the lock, not only the call that starts it.
            return list(self.app(environ, start_response))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=5000)
    args = parser.parse_args()
    app = DomainDispatcherApplication(create_backend_app)
    app.debug = True
    run_simple(
        args.host,
        args.port,
        DynamoDbOneAtATime(app),
        threaded=True,
        request_handler=MotoRequestHandler,
    )


if __name__ == "__main__":
    main()
