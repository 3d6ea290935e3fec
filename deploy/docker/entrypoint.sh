#!/bin/sh
# The images' entry point (the one Dockerfile): python -m tuneloop_$TUNELOOP_SERVICE (the build's
# SERVICE) with the arguments given, by default on all interfaces at the service's own port.
#   tuneloop-service                     -> python -m tuneloop_inference --host 0.0.0.0 --port 8003
#   tuneloop-service --port 9000         -> python -m tuneloop_inference --port 9000
#   tuneloop-service --health            -> exit 0 when GET 127.0.0.1:<port>/health answers 2xx
set -e
case "$TUNELOOP_SERVICE" in
  gateway) port=8000 ;;
  dataset) port=8001 ;;
  trainer) port=8002 ;;
  inference) port=8003 ;;
  *) echo "tuneloop-service: TUNELOOP_SERVICE must be dataset, trainer, inference or gateway" >&2
     exit 2 ;;
esac
if [ "${1:-}" = "--health" ]; then
  exec python -c "import sys, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{sys.argv[1]}/health', timeout=4)" "$port"
fi
[ $# -gt 0 ] || set -- --host 0.0.0.0 --port "$port"
exec python -m "tuneloop_$TUNELOOP_SERVICE" "$@"
