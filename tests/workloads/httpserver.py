"""httpserver.py PORT DIR: a threaded HTTP server (http.server's
ThreadingHTTPServer) serving data it holds in memory.

State: 2000 items (item i is a 64-byte string derived from i and a random
seed drawn at start), their running checksum, and a hit counter.
GET /item/N returns item N; GET /hits adds one to the counter and returns
it; GET /seed returns the seed. Each request is handled in a thread of its
own. DIR/ready holds the port once the server listens. On SIGTERM the
server stops, checks every item against the seed and the checksum, and
writes DIR/verdict ("PASS hits=N" or "FAIL: reason").
STASIS_TEST_CORRUPT=1 changes one item before the checks.
"""

import hashlib
import http.server
import os
import signal
import socketserver
import sys
import threading

port = int(sys.argv[1])
d = sys.argv[2]


def write(name, text):
    tmp = os.path.join(d, f".{name}.tmp.{os.urandom(8).hex()}")
    with open(tmp, "w") as f:
        f.write(text + "\n")
    os.rename(tmp, os.path.join(d, name))


seed = os.urandom(8).hex()


def make(i):
    return hashlib.sha256(f"{seed}:{i}".encode()).hexdigest()


items = [make(i) for i in range(2000)]
checksum = hashlib.sha256("".join(items).encode()).hexdigest()
hits = 0
lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self):
        global hits
        parts = self.path.strip("/").split("/")
        if parts[0] == "item" and len(parts) == 2 and parts[1].isdigit() and int(parts[1]) < len(items):
            body = items[int(parts[1])]
        elif parts == ["hits"]:
            with lock:
                hits += 1
                body = str(hits)
        elif parts == ["seed"]:
            body = seed
        else:
            self.send_error(404)
            return
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s\n" % (threading.current_thread().name, fmt % args))


class Server(http.server.ThreadingHTTPServer):
    def server_bind(self):
        # No getfqdn(): a name lookup has nowhere to go in a sandbox.
        socketserver.TCPServer.server_bind(self)
        self.server_name = "sandbox"
        self.server_port = self.server_address[1]


server = Server(("0.0.0.0", port), Handler)


def on_term(signum, frame):
    threading.Thread(target=server.shutdown).start()


signal.signal(signal.SIGTERM, on_term)
write("ready", str(server.server_address[1]))
server.serve_forever()
server.server_close()

if os.environ.get("STASIS_TEST_CORRUPT", "") not in ("", "0"):
    items[1234] = items[1234][:-1] + "x"
bad = [i for i in range(len(items)) if items[i] != make(i)]
if bad:
    write("verdict", f"FAIL: item {bad[0]} is {items[bad[0]]!r}, expected {make(bad[0])!r}")
    sys.exit(1)
if hashlib.sha256("".join(items).encode()).hexdigest() != checksum:
    write("verdict", "FAIL: the checksum of the items changed")
    sys.exit(1)
write("verdict", f"PASS hits={hits}")
