#!/usr/bin/env bash
# The project's test command (README: `make test`; CI runs it too).
# Lint first, then every package's tests, with the race detector on the
# packages that run goroutines.
set -euo pipefail
cd "$(dirname "$0")/.."

STATICCHECK_VERSION=v0.8.2
GOBIN="$(go env GOPATH)/bin"
export PATH="$GOBIN:$PATH"

echo "== gofmt"
unformatted="$(gofmt -l $(git ls-files '*.go' | grep -v '^vendor/') 2>/dev/null || true)"
if [ -n "$unformatted" ]; then
	echo "gofmt needed on:"; echo "$unformatted"; exit 1
fi

echo "== go vet"
go vet ./...

echo "== staticcheck"
if ! command -v staticcheck >/dev/null 2>&1; then
	go install "honnef.co/go/tools/cmd/staticcheck@${STATICCHECK_VERSION}"
fi
staticcheck ./...

# Packages with goroutines and sockets run under the race detector.
race_pkgs=()
plain_pkgs=()
for p in $(go list ./...); do
	case "$p" in
	stagecoach/worker*|stagecoach/coordinator*|stagecoach/internal/*) race_pkgs+=("$p") ;;
	*) plain_pkgs+=("$p") ;;
	esac
done

echo "== go test"
go test -count=1 -timeout 20m "${plain_pkgs[@]}"
if [ "${#race_pkgs[@]}" -gt 0 ]; then
	echo "== go test -race"
	go test -race -count=1 -timeout 20m "${race_pkgs[@]}"
fi
