# Stagecoach developer tasks. `make test` is what CI runs.
PROTOC_GEN_GO_VERSION      := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.0
GOBIN ?= $(shell go env GOPATH)/bin

.PHONY: build test proto tools image

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

# Build the stagecoach:dev container image (FROM scratch, no pulls).
image:
	bash deploy/build-image.sh
