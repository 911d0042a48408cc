#!/usr/bin/env bash
# Test-only Python packages from PyPI, never needed to build or run mal: tritonclient[grpc] (the
# client Triton users have) for the Open Inference Protocol test, and tensorboard (its own event
# reader) for the TensorBoard export test, kubernetes-validate (the Kubernetes schemas) for the
# deploy/k8s test. Installed into .cache/test-venv;
# prints the interpreter's path on its last line. When PyPI cannot be reached it says so and prints
# nothing, and the test that needs them skips with a message. Idempotent.
set -uo pipefail
cd "$(dirname "$0")/.."
venv=.cache/test-venv
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import tritonclient.grpc, numpy, tensorboard, kubernetes_validate' 2>/dev/null; then
  echo "$PWD/$venv/bin/python"
  exit 0
fi
rm -rf "$venv"
if python3 -m venv "$venv" >&2 && "$venv/bin/pip" install -q --disable-pip-version-check 'tritonclient[grpc]' numpy tensorboard kubernetes-validate >&2; then
  echo "$PWD/$venv/bin/python"
else
  echo "test-python-deps: could not install tritonclient[grpc], tensorboard and kubernetes-validate from PyPI; the tests that use them will skip" >&2
  rm -rf "$venv"
fi
