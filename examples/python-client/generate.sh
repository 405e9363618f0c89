#!/bin/sh
# Generates the gRPC stubs of gateway.v1 from the project's proto, and of
# orders.v1 from the orders example's proto, into gen/; and gen/orders.binpb,
# the descriptor set of orders.v1 (imports and comments included) that the
# gateway loads with --descriptor-set (../orders/README.md).
# Generated code is not committed (gen/ is in .gitignore): run this after
# `pip install -r requirements.txt`, and again whenever a proto changes.
#
#   ./generate.sh                  uses `python` (the active virtualenv)
#   PYTHON=/path/to/python ./generate.sh
set -eu
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python}"
rm -rf gen
mkdir -p gen
"$PYTHON" -m grpc_tools.protoc -I ../../proto --python_out=gen --grpc_python_out=gen gateway/v1/gateway.proto
# grpc_tools.protoc finds google/protobuf/timestamp.proto in its own copy of
# the well-known types.
"$PYTHON" -m grpc_tools.protoc -I ../orders/proto --python_out=gen --grpc_python_out=gen \
    --include_imports --include_source_info --descriptor_set_out=gen/orders.binpb orders/v1/orders.proto
echo "generated: $(cd gen && find . -name '*.py' -o -name '*.binpb' | sort | tr '\n' ' ')"
