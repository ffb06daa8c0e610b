#!/usr/bin/env python3
"""A small web service in plain Python 3 (standard library only), the "foreign service" of
scripts/trial/foreign-service: what a team not written in Rust would hand to Fifty.

GET /         answers 200, or 500 for a share of requests (ERROR_RATE), after a random service time
              (lognormal around LATENCY_MS milliseconds, as real request latencies are skewed)
GET /health   200 "ok"
GET /version  the release's VERSION file
GET /metrics  Prometheus text: http_requests_total{code=...} and the histogram
              http_request_duration_seconds with Prometheus' default buckets

ERROR_RATE and LATENCY_MS come from the environment or from files of those names in the working
directory (the release's directory when Fifty's agent runs it); defaults 0.01 and 20.
"""

import argparse
import math
import os
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# prometheus_client's default buckets (DEFAULT_BUCKETS), in seconds.
BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0]


def setting(name, default):
    """A number from the environment, else from the file `name` in the working directory."""
    text = os.environ.get(name)
    if text is None and os.path.exists(name):
        with open(name) as f:
            text = f.read()
    if text is None or not text.strip():
        return default
    return float(text.strip())


ERROR_RATE = setting("ERROR_RATE", 0.01)
LATENCY_S = setting("LATENCY_MS", 20.0) / 1000.0
VERSION = open("VERSION").read().strip() if os.path.exists("VERSION") else "dev"

lock = threading.Lock()
requests = {"200": 0, "500": 0}
buckets = [0] * len(BUCKETS)  # cumulative counts, as Prometheus exposes them
duration_sum = 0.0
duration_count = 0


def observe(code, seconds):
    global duration_sum, duration_count
    with lock:
        requests[code] += 1
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                buckets[i] += 1
        duration_sum += seconds
        duration_count += 1


def exposition():
    """One consistent snapshot in the Prometheus text format (version 0.0.4)."""
    with lock:
        lines = [
            "# HELP http_requests_total Requests to / by status code.",
            "# TYPE http_requests_total counter",
        ]
        for code, n in sorted(requests.items()):
            lines.append(f'http_requests_total{{code="{code}"}} {n}')
        lines += [
            "# HELP http_request_duration_seconds Time to answer a request to /.",
            "# TYPE http_request_duration_seconds histogram",
        ]
        for bound, n in zip(BUCKETS, buckets):
            lines.append(f'http_request_duration_seconds_bucket{{le="{bound}"}} {n}')
        lines.append(f'http_request_duration_seconds_bucket{{le="+Inf"}} {duration_count}')
        lines.append(f"http_request_duration_seconds_sum {duration_sum}")
        lines.append(f"http_request_duration_seconds_count {duration_count}")
    return "\n".join(lines) + "\n"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def answer(self, code, body, kind="text/plain; charset=utf-8"):
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/health":
            self.answer(200, "ok\n")
        elif self.path == "/version":
            self.answer(200, VERSION + "\n")
        elif self.path == "/metrics":
            self.answer(200, exposition(), "text/plain; version=0.0.4; charset=utf-8")
        elif self.path == "/":
            start = time.monotonic()
            time.sleep(random.lognormvariate(math.log(LATENCY_S), 0.5))
            code = "500" if random.random() < ERROR_RATE else "200"
            observe(code, time.monotonic() - start)
            self.answer(int(code), "error\n" if code == "500" else "hello\n")
        else:
            self.answer(404, "not found\n")

    def log_message(self, *args):
        pass  # one line per request would be most of what the service does


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bind", default="127.0.0.1")
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.bind, args.port), Handler)
    server.daemon_threads = True
    print(f"service {VERSION} listening on {args.bind}:{args.port} "
          f"(error rate {ERROR_RATE}, latency {LATENCY_S * 1000:.0f} ms)", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
