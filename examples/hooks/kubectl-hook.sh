#!/usr/bin/env bash
# console-gateway runtime hook for labs run on Kubernetes, every resource of a session labelled
# console-gateway/session=<session id>. Contract (examples/hooks/README.md): the action is the
# last argument, {"action", "session": {...}} arrives as JSON on stdin, one JSON object goes to
# stdout. Requires: bash 4+, jq, kubectl with a context allowed to get/list/delete those kinds.
# KUBE_NAMESPACE selects the namespace (default: the context's).
#
#   RUNTIME_HOOK_COMMAND='["/opt/console-gateway/examples/hooks/kubectl-hook.sh"]'
set -euo pipefail

action="${!#}"
input="$(cat)"
ns=()
[[ -n "${KUBE_NAMESPACE:-}" ]] && ns=(--namespace "$KUBE_NAMESPACE")
label="console-gateway/session"
kinds="deployments,statefulsets,jobs,pods,services,configmaps,secrets,persistentvolumeclaims"

reply() { # reply OK OUTPUT [RESOURCES_JSON]
  jq -cn --argjson ok "$1" --arg output "$2" --argjson resources "${3:-[]}" \
    '{ok: $ok, output: $output, resources: $resources}'
}

# Only a UUID may go into the label selector, so a hostile id cannot widen it ("x,app!=y").
session_id="$(jq -r '.session.sessionId // empty' <<<"$input" | tr 'A-Z' 'a-z')"
uuid='^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
if [[ "$action" != "list" && ! "$session_id" =~ $uuid ]]; then
  reply false "session.sessionId must be a UUID"
  exit 1
fi
selector="${label}=${session_id}"

case "$action" in
  diagnostics)
    get_rc=0; pods="$(kubectl "${ns[@]}" get pods -l "$selector" -o wide 2>&1)" || get_rc=$?
    logs_rc=0; logs="$(kubectl "${ns[@]}" logs -l "$selector" --all-containers --prefix --tail=50 2>&1)" || logs_rc=$?
    events="$(kubectl "${ns[@]}" get events --field-selector type=Warning --sort-by=.lastTimestamp 2>&1 | tail -n 20)" || true
    ok=true; [[ $get_rc -eq 0 && $logs_rc -eq 0 ]] || ok=false
    reply "$ok" "$(printf -- '--- kubectl get pods -l %s ---\n%s\n--- logs (last 50 lines per container) ---\n%s\n--- warning events ---\n%s\n' "$selector" "$pods" "$logs" "$events")"
    ;;
  teardown)
    rc=0; out="$(kubectl "${ns[@]}" delete "$kinds" -l "$selector" --ignore-not-found --wait=false 2>&1)" || rc=$?
    if [[ $rc -eq 0 ]]; then reply true "$out"; else reply false "$out"; exit 1; fi
    ;;
  list)
    # RECONCILIATION_NAMESPACES arrive as "namespaces"; none: KUBE_NAMESPACE or the context's.
    mapfile -t namespaces < <(jq -r '.namespaces // [] | .[]' <<<"$input")
    ((${#namespaces[@]} > 0)) || namespaces=("${KUBE_NAMESPACE:-}")
    resources='[]'
    for namespace in "${namespaces[@]}"; do
      scope=()
      if [[ -n "$namespace" ]]; then
        [[ "$namespace" =~ ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$ ]] || { reply false "not a namespace name: $namespace"; exit 1; }
        scope=(--namespace="$namespace")
      fi
      rc=0; pods="$(kubectl "${scope[@]}" get pods -l "$label" -o json 2>&1)" || rc=$?
      if [[ $rc -ne 0 ]]; then reply false "$pods"; exit 1; fi
      resources="$(jq -c --arg key "$label" --argjson before "$resources" '$before + [.items[]
        | {sessionId: .metadata.labels[$key], kind: "pod", name: .metadata.name,
           namespace: .metadata.namespace, status: .status.phase}]' <<<"$pods")"
    done
    reply true "" "$resources"
    ;;
  *)
    reply false "unknown action: $action"
    exit 2
    ;;
esac
