#!/bin/sh
# Generates the gRPC stubs of gateway.v1 from the project's proto into gen/
# (this project's own copy; examples/python-client has the same script).
# Generated code is not committed (gen/ is in .gitignore): run this after
# `pip install -r requirements.txt`, and again whenever the proto changes.
#
#   ./generate.sh                  uses `python` (the active virtualenv)
#   PYTHON=/path/to/python ./generate.sh
set -eu
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python}"
rm -rf gen
mkdir -p gen
"$PYTHON" -m grpc_tools.protoc -I ../../proto --python_out=gen --grpc_python_out=gen gateway/v1/gateway.proto
echo "generated: $(cd gen && find . -name '*.py' | sort | tr '\n' ' ')"
