"""A small HTTP replica for serving tests, run as a gridctl job: listens on $GRIDCTL_HOST:$GRIDCTL_PORT.

GET /health answers the status code written in $HEALTH_FILE (200 when the file is missing; a
`{host}` in its name is replaced by $GRIDCTL_HOST, so a test can fail the checks of one node's replica);
GET /work answers the attempt id; GET /stream sends N chunks. $START_DELAY_S delays listening
(a model still loading).
"""

import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


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
            try:
                path = os.environ["HEALTH_FILE"].replace("{host}", os.environ.get("GRIDCTL_HOST", ""))
                code = int(open(path).read().strip() or 200)
            except (KeyError, OSError, ValueError):
                code = 200
            self._send(code, b"ok\n" if code < 300 else b"not ready\n")
        elif self.path.startswith("/work"):
            self._send(200, os.environ.get("GRIDCTL_ATTEMPT", "?").encode() + b"\n")
        else:
            self._send(404, b"no such path\n")


def main() -> None:
    time.sleep(float(os.environ.get("START_DELAY_S", "0")))
    server = ThreadingHTTPServer((os.environ["GRIDCTL_HOST"], int(os.environ["GRIDCTL_PORT"])), Handler)
    print(f"serving on {server.server_address}", flush=True)
    sys.stdout.flush()
    server.serve_forever()


if __name__ == "__main__":
    main()
