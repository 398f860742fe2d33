#!/usr/bin/env bash
# console-gateway runtime hook for labs run with docker compose, one compose project per session
# named cg-<session id>. Contract (examples/hooks/README.md): the action is the last argument,
# {"action", "session": {...}} arrives as JSON on stdin, one JSON object goes to stdout.
# Requires: bash 4+, jq, docker with the compose plugin (v2).
#
#   RUNTIME_HOOK_COMMAND='["/opt/console-gateway/examples/hooks/compose-hook.sh"]'
set -euo pipefail

action="${!#}"
input="$(cat)"

reply() { # reply OK OUTPUT [RESOURCES_JSON]
  jq -cn --argjson ok "$1" --arg output "$2" --argjson resources "${3:-[]}" \
    '{ok: $ok, output: $output, resources: $resources}'
}

# Everything below goes into a command line as an argument, never through a shell; still, only a
# UUID may name a project, so a hostile session id cannot address someone else's resources.
session_id="$(jq -r '.session.sessionId // empty' <<<"$input" | tr 'A-Z' 'a-z')"
uuid='^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
if [[ "$action" != "list" && ! "$session_id" =~ $uuid ]]; then
  reply false "session.sessionId must be a UUID"
  exit 1
fi
project="cg-${session_id}"

case "$action" in
  diagnostics)
    ps_rc=0; ps_out="$(docker compose -p "$project" ps --all 2>&1)" || ps_rc=$?
    logs_rc=0; logs_out="$(docker compose -p "$project" logs --no-color --timestamps --tail 50 2>&1)" || logs_rc=$?
    ok=true; [[ $ps_rc -eq 0 && $logs_rc -eq 0 ]] || ok=false
    reply "$ok" "$(printf -- '--- docker compose -p %s ps ---\n%s\n--- logs (last 50 lines per service) ---\n%s\n' "$project" "$ps_out" "$logs_out")"
    ;;
  teardown)
    rc=0; out="$(docker compose -p "$project" down --remove-orphans --volumes --timeout 10 2>&1)" || rc=$?
    if [[ $rc -eq 0 ]]; then reply true "$out"; else reply false "$out"; exit 1; fi
    ;;
  list)
    rc=0; projects="$(docker compose ls --all --format json 2>&1)" || rc=$?
    if [[ $rc -ne 0 ]]; then reply false "$projects"; exit 1; fi
    resources="$(jq -c '[.[]? | select(.Name | startswith("cg-"))
      | {sessionId: (.Name | ltrimstr("cg-")), kind: "compose-project", name: .Name, status: .Status}]' <<<"$projects")"
    reply true "" "$resources"
    ;;
  *)
    reply false "unknown action: $action"
    exit 2
    ;;
esac
