#!/usr/bin/env bash
# Property-based API test: schemathesis generates requests from a running `serve`'s /openapi.json and checks
# that no answer is a server error and every answer matches the spec (status, content type, schema, headers).
# Usage: tests/schemathesis.sh [path/to/chainkeeper]
set -euo pipefail
bin=${1:-target/debug/chainkeeper}
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bin" serve --listen "127.0.0.1:$port" --data-dir "$dir" >"$dir/serve.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
token=$("$bin" token issue --data-dir "$dir" --platform --scope admin)
# Something to find: an organisation, a database and a container of each credential kind.
api() { curl -fs -o /dev/null -H "Authorization: Bearer $token" -H 'content-type: application/json' "$@"; }
api -d '{"name":"acme"}' "http://127.0.0.1:$port/v1/orgs"
api -d '{"name":"main"}' "http://127.0.0.1:$port/v1/orgs/acme/databases"
api -d '{"alias":"eol","kind":"oauth2_code","provider":"exact-online-nl"}' "http://127.0.0.1:$port/v1/orgs/acme/databases/main/containers"
api -d '{"alias":"sql","kind":"password"}' "http://127.0.0.1:$port/v1/orgs/acme/databases/main/containers"
schemathesis run "http://127.0.0.1:$port/openapi.json" \
    -H "Authorization: Bearer $token" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance \
    --max-examples 40 --generation-deterministic --request-timeout 10
if grep -q "panicked" "$dir/serve.log"; then
    echo "serve panicked during the schemathesis run:" >&2
    grep -A3 panicked "$dir/serve.log" >&2
    exit 1
fi
