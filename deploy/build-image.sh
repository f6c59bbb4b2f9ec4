#!/usr/bin/env bash
# Builds the stagecoach:dev image FROM scratch: a static binary plus a
# slice of the Go standard library's sources as the default corpus.
set -euo pipefail
cd "$(dirname "$0")/.."
tag="${1:-stagecoach:dev}"
ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$ctx/stagecoach" ./cmd/stagecoach
goroot="$(go env GOROOT)"
mkdir -p "$ctx/corpus" "$ctx/tmp"
for d in fmt strings sort bufio bytes strconv errors io unicode/utf8 encoding/json net/url text/template; do
	mkdir -p "$ctx/corpus/$d"
	cp "$goroot/src/$d"/*.go "$ctx/corpus/$d/"
done
docker build -q -t "$tag" -f deploy/Dockerfile "$ctx"
echo "built $tag"
