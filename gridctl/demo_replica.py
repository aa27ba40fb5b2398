"""A small HTTP replica of a service, run as a gridctl job: listens on $GRIDCTL_HOST:$GRIDCTL_PORT.

`gridctl demo` runs it as its routed service (demo.py starts it by this file's path, so it needs
nothing but the Python standard library and runs wherever the file is installed); the serving
tests and benchmarks/serving.py run it too.

GET /health answers 200, or the status code written in $HEALTH_FILE when that is set (a `{host}`
in its name is replaced by $GRIDCTL_HOST, so a test can fail the checks of one node's replica);
GET /work answers the attempt id ($GRIDCTL_ATTEMPT); anything else 404. $START_DELAY_S delays
listening (a model still loading).

A port still held by another process is tried again for up to BIND_WAIT_S before giving up (exit
1): simulated nodes share one address, and gridctl stops a replaced copy and launches its
replacement in the same step, so the old copy can hold the port for a moment.
"""

import errno
import os
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


BIND_WAIT_S = 10.0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # the head and the body are two writes: with Nagle on, the body waits for the client's delayed ACK (40 ms)
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def _send(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/health":
            code = health_code()
            self._send(code, b"ok\n" if code < 300 else b"not ready\n")
        elif self.path.startswith("/work"):
            self._send(200, os.environ.get("GRIDCTL_ATTEMPT", "?").encode() + b"\n")
        else:
            self._send(404, b"no such path\n")


def health_code() -> int:
    try:
        path = os.environ["HEALTH_FILE"].replace("{host}", os.environ.get("GRIDCTL_HOST", ""))
        with open(path) as f:
            return int(f.read(16).strip() or 200)
    except (KeyError, OSError, ValueError):
        return 200


def bind(host: str, port: int) -> ThreadingHTTPServer:
    deadline = time.monotonic() + BIND_WAIT_S
    while True:
        try:
            return ThreadingHTTPServer((host, port), Handler)
        except OSError as e:
            if e.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def main() -> None:
    time.sleep(float(os.environ.get("START_DELAY_S", "0")))
    server = bind(os.environ["GRIDCTL_HOST"], int(os.environ["GRIDCTL_PORT"]))
    print(f"serving on {server.server_address}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
