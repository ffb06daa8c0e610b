#!/bin/sh
# Prints every test of the suite, one per line (Fifty's `[test] list`).
for f in tests/*.sh; do basename "$f" .sh; done
