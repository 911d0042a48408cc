#!/usr/bin/env bash
# deploy/k8s/ against the Kubernetes schemas (kubernetes-validate from PyPI, which bundles them,
# --strict: unknown fields are errors), a broken copy refused (the check can fail), and every
# flag the manifests pass to mal-coordinator and mal-worker known to the built binaries.
#   tests/deploy/k8s_test.sh SOURCE_DIR BUILD_DIR     (MAL_TEST_PYTHON: the test venv's python)
set -uo pipefail
src="$1"
build="$2"
py="${MAL_TEST_PYTHON:-}"
if [ -z "$py" ] || ! "$py" -c 'import kubernetes_validate' 2>/dev/null; then
  echo "SKIP: kubernetes-validate is not installed (deploy/test-python-deps.sh installs it)"
  exit 77
fi
validate() { "$py" -m kubernetes_validate --strict --quiet "$@"; }
fail=0
validate "$src"/deploy/k8s/*.yaml || { echo "FAIL: deploy/k8s does not validate"; fail=1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed 's/readinessProbe:/readinesProbe:/' "$src/deploy/k8s/worker.yaml" > "$tmp/typo.yaml"
sed 's/replicas: 1/replicas: one/' "$src/deploy/k8s/coordinator.yaml" > "$tmp/type.yaml"
for broken in "$tmp/typo.yaml" "$tmp/type.yaml"; do
  if validate "$broken" > "$tmp/out" 2>&1; then
    echo "FAIL: the validator accepted $(basename "$broken")"; fail=1
  fi
done

# Each "- --flag=..." of a container's args is an option of that binary.
check_flags() {  # MANIFEST BINARY
  local help
  help=$("$2" --help 2>&1)
  for flag in $(grep -oE '^ +- --[a-z0-9-]+' "$1" | sed 's/^ *- //'); do
    if ! grep -q -- "$flag" <<< "$help"; then
      echo "FAIL: $(basename "$1") passes $flag, which $(basename "$2") does not know"; fail=1
    fi
  done
}
check_flags "$src/deploy/k8s/coordinator.yaml" "$build/server/mal-coordinator"
check_flags "$src/deploy/k8s/worker.yaml" "$build/worker/mal-worker"
for g in nvidia.com/gpu volumeClaimTemplates secretName grpc; do
  grep -q "$g" "$src"/deploy/k8s/*.yaml || { echo "FAIL: deploy/k8s lacks $g"; fail=1; }
done
[ "$fail" = 0 ] && echo "deploy/k8s: every manifest validates, broken copies are refused, flags exist"
exit "$fail"
