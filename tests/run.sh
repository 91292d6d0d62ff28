#!/usr/bin/env bash
# Runs sdfarm's whole test suite on a fresh machine: installs what the tests need that cargo
# does not bring (an S3-compatible server, the chart validators), checks the services they
# use, validates the Helm chart, then one `cargo test --workspace` (one build for everything).
set -euo pipefail
cd "$(dirname "$0")/.."

# S3-compatible server for the object-storage tests (moto, from PyPI).
if ! command -v moto_server >/dev/null 2>&1; then
  echo "installing moto_server (S3-compatible test server) from PyPI"
  python3 -m pip install --quiet --disable-pip-version-check 'moto[server]>=5,<6'
  hash -r
fi
if ! command -v moto_server >/dev/null 2>&1; then
  # pip may have put it in the user scripts folder.
  export PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$HOME/.local/bin:$PATH"
fi
command -v moto_server >/dev/null || { echo "moto_server not found after install" >&2; exit 1; }

# Hugging Face `datasets` (with pyarrow), which the export tests load the imagefolder export
# and the Parquet manifest with.
if ! python3 -c 'import datasets, pyarrow.parquet, PIL' >/dev/null 2>&1; then
  echo "installing datasets (Hugging Face) and Pillow from PyPI"
  python3 -m pip install --quiet --disable-pip-version-check 'datasets>=2.14' pillow
fi

# Postgres for the store and end-to-end tests (SDFARM_TEST_DATABASE_URL overrides).
export SDFARM_TEST_DATABASE_URL="${SDFARM_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
if command -v pg_isready >/dev/null 2>&1 && ! pg_isready -q -h 127.0.0.1 -p 5432; then
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    echo "starting the local PostgreSQL cluster"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  fi
fi

# The Helm chart: rendered and validated offline against Kubernetes and KEDA schemas.
bash deploy/ci/validate-chart.sh

exec cargo test --workspace "$@"
