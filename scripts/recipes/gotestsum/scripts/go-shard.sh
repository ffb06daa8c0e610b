#!/bin/sh
# Runs the tests listed in $FIFTY_TESTS_FILE (import/path::TestName, one a line) with gotestsum,
# one package at a time (so a name two packages share runs only where it was listed), or every
# test without a list. JUnit goes to reports/.
set -eu
mkdir -p reports
if [ -z "${FIFTY_TESTS_FILE:-}" ] || [ ! -s "$FIFTY_TESTS_FILE" ]; then
  exec gotestsum --junitfile reports/junit.xml -- ./...
fi
status=0
n=0
for pkg in $(sed 's/::[^:]*$//' "$FIFTY_TESTS_FILE" | sort -u); do
  names=$(grep -F "$pkg::" "$FIFTY_TESTS_FILE" | sed 's/.*:://' | paste -sd'|' -)
  n=$((n + 1))
  gotestsum --junitfile "reports/junit-$n.xml" -- -run "^($names)\$" "$pkg" || status=1
done
exit $status
