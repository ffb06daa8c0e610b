#!/usr/bin/env python3
"""Bounded load for scripts/trial/foreign-service: GET / on each port at a steady rate, from one
thread per port, until --duration has passed or the process --parent has gone (so it never
outlives the trial). Prints how many requests each port got when it stops."""

import argparse
import http.client
import os
import threading
import time


def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def drive(port, rate, until, counts, stop):
    gap = 1.0 / rate
    next_at = time.monotonic()
    while time.monotonic() < until and not stop.is_set():
        # Several senders a port: a request slowed by the service never holds the rate back.
        threading.Thread(target=one, args=(port, counts), daemon=True).start()
        next_at += gap
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            next_at = time.monotonic()


def one(port, counts):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", "/")
        status = c.getresponse().status
        c.close()
    except OSError:
        status = "failed"
    with counts["lock"]:
        key = (port, status)
        counts[key] = counts.get(key, 0) + 1


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ports", required=True, help="comma-separated loopback ports")
    p.add_argument("--rate", type=float, default=30.0, help="requests per second per port")
    p.add_argument("--duration", type=float, default=3600.0, help="seconds; the load stops by itself after")
    p.add_argument("--parent", type=int, default=os.getppid(), help="stop when this process is gone")
    a = p.parse_args()
    if not 0 < a.rate <= 1000:
        raise SystemExit(f"--rate {a.rate}: between 0 and 1000 requests a second")
    ports = [int(x) for x in a.ports.split(",") if x]
    until = time.monotonic() + a.duration
    counts = {"lock": threading.Lock()}
    stop = threading.Event()
    threads = [threading.Thread(target=drive, args=(port, a.rate, until, counts, stop), daemon=True)
               for port in ports]
    for t in threads:
        t.start()
    while time.monotonic() < until and alive(a.parent):
        time.sleep(1)
    stop.set()
    for t in threads:
        t.join()
    with counts["lock"]:
        summary = {k: v for k, v in counts.items() if k != "lock"}
    print("load stopped:", ", ".join(f"{port} {status}: {n}" for (port, status), n in sorted(summary.items(), key=str)))


if __name__ == "__main__":
    main()
