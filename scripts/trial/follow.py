#!/usr/bin/env python3
"""Follows one release of scripts/trial/foreign-service through Fifty, with the `fifty` CLI only,
and prints one JSON line saying what happened to it:

  outcome     "promoted by itself", "held" (a wave waited for a person), "reverted",
              "failed" (health, aborted...), "tests failed" or "no release"
  to_release  seconds from the push to the signed release (tests and packaging)
  rollout     seconds from the rollout's start to its end
  waves       per wave: seconds it baked (extensions included) and the immune system's verdict
              lines at the last look seen while it baked (the passing look is not seen: the
              wave moves on at once)
  held        per held wave: the reason the immune system gave

A held wave is promoted (`fifty rollout promote`), as the person it waits for would, so that the
trial goes on; the release still counts as held.
"""

import argparse
import datetime
import json
import subprocess
import sys
import time


def fifty(bin_, *args):
    out = subprocess.run([bin_, *args], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"fifty {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def fifty_json(bin_, *args):
    return json.loads(fifty(bin_, *args, "--json"))


def when(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() if text else None


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fifty", required=True, help="the fifty CLI")
    p.add_argument("--repo", required=True)
    p.add_argument("--sha", required=True)
    p.add_argument("--pushed-at", type=float, required=True, help="UNIX time of the push")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds for the whole release")
    a = p.parse_args()
    deadline = time.time() + a.timeout
    result = {"sha": a.sha[:10], "release": None, "outcome": None, "to_release": None, "rollout": None,
              "waves": [], "held": []}

    # The release: CI tests the commit, a build agent packages it, the leader signs it.
    release = None
    while release is None and time.time() < deadline:
        try:
            for r in fifty_json(a.fifty, "releases", "--repo", a.repo):
                if r["sha"] == a.sha:
                    release = r
            if release is None:
                commit = fifty_json(a.fifty, "commit", "show", a.sha)
                if commit.get("state") == "failed":
                    result["outcome"] = "tests failed"
                    break
        except (RuntimeError, json.JSONDecodeError, subprocess.TimeoutExpired) as e:
            print(f"follow: {e}", file=sys.stderr)
        if release is None:
            time.sleep(1)
    if release is None:
        result["outcome"] = result["outcome"] or "no release"
        print(json.dumps(result))
        return
    result["release"] = release["id"]
    result["to_release"] = round(when(release["created_at"]) - a.pushed_at, 1)

    # Its rollout, until it ends.
    waves = {}
    held_waves = set()
    while time.time() < deadline:
        try:
            r = fifty_json(a.fifty, "rollout", "status", "--repo", a.repo)
        except (RuntimeError, json.JSONDecodeError, subprocess.TimeoutExpired) as e:
            print(f"follow: {e}", file=sys.stderr)
            time.sleep(1)
            continue
        if r.get("release") != release["id"] or r.get("kind") != "deploy":
            time.sleep(1)
            continue
        now = time.time()
        w = r["wave"]
        if r["phase"] == "baking":
            seen = waves.setdefault(w, {"wave": w, "first": now, "last": now, "verdict": []})
            seen["last"] = now
            if r.get("immune"):
                seen["verdict"] = r["immune"]
        if r["phase"] == "awaiting_promotion" and r.get("held") and w not in held_waves:
            held_waves.add(w)
            result["held"].append({"wave": w, "why": r["held"]})
            print(f"follow: wave {w} of release {release['id']} held: {r['held']}; promoting it", file=sys.stderr)
            try:
                fifty(a.fifty, "rollout", "promote", "--repo", a.repo)
            except RuntimeError as e:
                print(f"follow: {e}", file=sys.stderr)
        if r["phase"] == "done":
            outcome = (r.get("outcome") or {}).get("kind")
            if outcome == "succeeded":
                result["outcome"] = "held" if result["held"] else "promoted by itself"
            elif outcome == "reverted":
                result["outcome"] = "reverted"
                result["why"] = r["outcome"].get("why")
            else:
                result["outcome"] = outcome or "unknown"
                result["why"] = json.dumps(r.get("outcome"))
            start, end = when(r["started_at"]), when(r.get("finished_at"))
            result["rollout"] = round(end - start, 1) if start and end else None
            result["events"] = [e for _, e in r["events"]]
            break
        time.sleep(1)
    result["outcome"] = result["outcome"] or "timed out"
    result["waves"] = [{"wave": s["wave"], "baked": round(s["last"] - s["first"], 1), "verdict": s["verdict"]}
                       for _, s in sorted(waves.items())]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
