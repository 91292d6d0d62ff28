#!/usr/bin/env bash
# Offline Helm chart validation for CI: installs its tools when missing (helm as the
# helm-python-sdk's embedded library and kubernetes-validate's schemas from PyPI, KEDA's CRD
# schemas from npm), then renders the chart and validates every manifest (validate_chart.py).
set -euo pipefail
cd "$(dirname "$0")"

if ! python3 -c 'import helm_python, kubernetes_validate' 2>/dev/null; then
  echo "installing helm-python-sdk and kubernetes-validate from PyPI"
  python3 -m pip install --quiet --disable-pip-version-check \
    'helm-python-sdk==0.2.2' 'kubernetes-validate==1.37.0'
fi
if [ ! -d keda/node_modules/@kubernetes-models/keda ]; then
  echo "installing KEDA schemas (@kubernetes-models/keda) from npm"
  (cd keda && npm ci --no-audit --no-fund --loglevel=error)
fi
exec python3 validate_chart.py
