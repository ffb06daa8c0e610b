#!/bin/sh
# Runs this shard's tests and writes reports/junit.xml.
#
# Fifty gives the shard's tests in $FIFTY_TESTS_FILE, one per line. Without a list (an empty
# file, or run by hand), it takes every test whose position modulo $FIFTY_SHARD_COUNT is
# $FIFTY_SHARD_INDEX.
set -u
index=${FIFTY_SHARD_INDEX:-0}
count=${FIFTY_SHARD_COUNT:-1}
if [ -n "${FIFTY_TESTS_FILE:-}" ] && [ -s "$FIFTY_TESTS_FILE" ]; then
  tests=$(cat "$FIFTY_TESTS_FILE")
else
  tests=$(sh scripts/list-tests.sh | awk -v i="$index" -v n="$count" '(NR - 1) % n == i')
fi

escape() { sed -e 's/&/\&amp;/g' -e 's/</\&lt;/g' -e 's/>/\&gt;/g' -e 's/"/\&quot;/g'; }

mkdir -p reports
cases=""
failures=0
n=0
for t in $tests; do
  n=$((n + 1))
  start=$(date +%s%N)
  out=$(sh "tests/$t.sh" 2>&1)
  status=$?
  end=$(date +%s%N)
  secs=$(awk -v ns=$((end - start)) 'BEGIN { printf "%.3f", ns / 1e9 }')
  if [ $status -eq 0 ]; then
    echo "ok    $t (${secs}s)"
    cases="$cases<testcase name=\"$t\" time=\"$secs\"/>
"
  else
    failures=$((failures + 1))
    echo "FAIL  $t (${secs}s): $out"
    msg=$(printf '%s' "$out" | head -c 2000 | escape)
    cases="$cases<testcase name=\"$t\" time=\"$secs\"><failure message=\"$msg\">$msg</failure></testcase>
"
  fi
done
{
  echo '<?xml version="1.0" encoding="UTF-8"?>'
  echo "<testsuite name=\"shop\" tests=\"$n\" failures=\"$failures\">"
  printf '%s' "$cases"
  echo '</testsuite>'
} > reports/junit.xml
echo "$n tests, $failures failed (shard $index of $count)"
[ $failures -eq 0 ]
