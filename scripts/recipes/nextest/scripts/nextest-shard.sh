#!/bin/sh
# Runs the tests listed in $FIFTY_TESTS_FILE (binary-id::test-name, one a line) with cargo
# nextest, or every test without a list. The filter names each test by binary and name exactly.
set -eu
if [ -z "${FIFTY_TESTS_FILE:-}" ] || [ ! -s "$FIFTY_TESTS_FILE" ]; then
  exec cargo nextest run --no-fail-fast
fi
filter=$(cargo nextest list --message-format oneline | while read -r bin name; do
  if grep -qxF "$bin::$name" "$FIFTY_TESTS_FILE"; then printf '(binary_id(=%s) & test(=%s)) | ' "$bin" "$name"; fi
done)
exec cargo nextest run --no-fail-fast -E "${filter% | }"
