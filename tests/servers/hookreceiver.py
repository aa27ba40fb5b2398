"""A real webhook receiver on 127.0.0.1 for alert hook tests: stdlib HTTP server in a thread.

Each POST is kept (headers and JSON body) and answered by the next entry of `answers`: a status
code, "hold" (keep the request open until `release()`, then 200) or nothing left (200). Used by
tests/integration/test_alert_hooks.py.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver:
    def __init__(self, answers=()):
        self.answers = list(answers)
        self.requests: list[tuple[dict, dict]] = []       # (headers, body) in arrival order
        self.paths: list[str] = []
        self._got = threading.Condition()
        self._released = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                size = min(int(self.headers.get("Content-Length") or 0), 1 << 20)
                body = json.loads(self.rfile.read(size) or b"null")
                with receiver._got:
                    receiver.requests.append((dict(self.headers), body))
                    receiver.paths.append(self.path)
                    answer = receiver.answers.pop(0) if receiver.answers else 200
                    receiver._got.notify_all()
                if answer == "hold":
                    receiver._released.wait(120)
                    answer = 200
                try:
                    self.send_response(answer)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass            # the sender is gone (timed out, or killed by the test)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/gridctl-token"

    def start(self) -> "Receiver":
        self.thread.start()
        return self

    def wait_for(self, count: int, timeout_s: float = 60) -> bool:
        """True once `count` requests have arrived (False after timeout_s)."""
        with self._got:
            return self._got.wait_for(lambda: len(self.requests) >= count, timeout_s)

    def events(self) -> list[list[dict]]:
        """The events of each request, in arrival order."""
        return [body["events"] for _, body in self.requests]

    def release(self) -> None:
        self._released.set()

    def stop(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()
