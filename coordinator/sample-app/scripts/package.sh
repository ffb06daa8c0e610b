#!/bin/sh
# Builds dist/app.tar.gz, the shop's release: its server (bin/shop-server), its VERSION, and
# whatever is under release/ (per-release settings the server reads from its directory, such as
# ERROR_RATE or UNHEALTHY).
#
# The sample shop's server is the prebuilt fifty-sample-service binary: $FIFTY_SAMPLE_SERVICE on
# the build host (`fifty demo` and the tests set it), or fifty-sample-service on PATH. A real
# application would compile itself here.
set -eu
bin=${FIFTY_SAMPLE_SERVICE:-$(command -v fifty-sample-service || true)}
if [ -z "$bin" ] || [ ! -x "$bin" ]; then
  echo "package: set FIFTY_SAMPLE_SERVICE to the fifty-sample-service binary" >&2
  exit 1
fi
rm -rf dist
mkdir -p dist/pkg/bin
cp "$bin" dist/pkg/bin/shop-server
printf '%s\n' "$(printf '%s' "${FIFTY_COMMIT:-dev}" | cut -c1-10)" > dist/pkg/VERSION
cp -R release/. dist/pkg/
tar -czf dist/app.tar.gz -C dist/pkg .
echo "packaged $(wc -c < dist/app.tar.gz) bytes"
