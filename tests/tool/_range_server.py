"""A local HTTP server for fake coco.pt files: loopback only, with Range support and a cut connection."""
import http.server
import threading
from typing import List, Optional, Tuple


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves the owner's payload at any path, from the start of a Range header when the owner honours it."""

    timeout = 10  # seconds a connection may stay silent: nothing hangs

    def do_GET(self):
        owner = self.server.owner
        body, start = owner.payload, 0
        wanted = self.headers.get("Range")
        owner.requests.append((self.path, wanted))
        if wanted and owner.honour_range:
            start = int(wanted.split("=")[1].split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        data = body[start:]
        if owner.cut_after is not None:  # the connection breaks part way, once
            data, owner.cut_after = data[: owner.cut_after], None
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class CocoServer:
    """
    Serves payload at url = http://127.0.0.1:PORT/coco.pt in a daemon
    thread; use in a with-block. Set payload, cut_after (bytes sent before
    the first response breaks off) and honour_range at any time.

    Attributes: url; requests, a list of (path, Range header or None) in the
    order received.
    """

    def __init__(self, payload: bytes = b"", cut_after: Optional[int] = None, honour_range: bool = True):
        self.payload, self.cut_after, self.honour_range = payload, cut_after, honour_range
        self.requests: List[Tuple[str, Optional[str]]] = []
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
        self.httpd.owner = self
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/coco.pt"

    @property
    def ranges(self) -> List[Optional[str]]:
        """The Range header of each request (None: none)."""
        return [wanted for _, wanted in self.requests]

    def __enter__(self) -> "CocoServer":
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
