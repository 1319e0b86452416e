#!/usr/bin/env bash
# Runs the sharded eval, waits for every index, then the merge, and prints the merge's output (the run's summary).
#   recipes/kubernetes/run.sh [namespace]
# Kubernetes has no "after that Job" dependency, so the wait is here; a workflow engine (Argo, Kueue) can take it.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
ns=(--namespace "${1:-default}")
manifest="$here/eval-indexed-job.yaml"
# the two documents of the manifest, applied one after the other
kubectl "${ns[@]}" apply -f <(awk 'BEGIN{d=0} /^---$/{d++; next} d==0' "$manifest")
kubectl "${ns[@]}" wait --for=condition=complete --timeout=24h job/piggyback-eval
kubectl "${ns[@]}" apply -f <(awk 'BEGIN{d=0} /^---$/{d++; next} d==1' "$manifest")
kubectl "${ns[@]}" wait --for=condition=complete --timeout=1h job/piggyback-merge || true
kubectl "${ns[@]}" logs job/piggyback-merge
