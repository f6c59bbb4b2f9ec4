# Stagecoach developer tasks. `make test` is what CI runs.
PROTOC_GEN_GO_VERSION      := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.0
GOBIN ?= $(shell go env GOPATH)/bin

.PHONY: build test proto proto-python tools image

build:
	CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o bin/stagecoach ./cmd/stagecoach

test:
	bash scripts/test.sh

tools:
	go install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)

# Regenerate the gRPC code (needs protoc: apt-get install protobuf-compiler).
proto:
	PATH="$(GOBIN):$$PATH" protoc --go_out=. --go_opt=paths=source_relative \
		--go-grpc_out=. --go-grpc_opt=paths=source_relative proto/stagecoach.proto proto/compute/compute.proto

# Regenerate the Python stubs of the compute protocol for the PyTorch backend
# (needs protoc and grpc_python_plugin: apt-get install protobuf-compiler
# protobuf-compiler-grpc). The include path maps the directory to the
# package name, so the gRPC stub imports `from stagecoach_torch import compute_pb2`.
GRPC_PYTHON_PLUGIN ?= $(shell command -v grpc_python_plugin)
proto-python:
	protoc -Istagecoach_torch=proto/compute --python_out=backends/torch --grpc_python_out=backends/torch \
		--plugin=protoc-gen-grpc_python=$(GRPC_PYTHON_PLUGIN) stagecoach_torch/compute.proto

# Build the stagecoach:dev container image (FROM scratch, no pulls).
image:
	bash deploy/build-image.sh
