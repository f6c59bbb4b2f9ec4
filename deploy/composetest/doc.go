// Package composetest holds the end-to-end test of the top-level
// docker-compose.yml: it builds the image, brings the whole cluster up
// (three etcd members, two coordinators, five workers), stops the leader
// coordinator and kills a plan worker mid-run, and checks in etcd that
// the job still committed every step exactly once.
//
// It needs a Docker engine and docker-compose v1. Without an engine it
// skips, unless STAGECOACH_REQUIRE_DOCKER=1 (CI sets it), where that is a
// failure. `go test -short` skips it too: it takes a minute or two.
// STAGECOACH_COMPOSE_IMAGE=tag runs the tests on an image already built
// (`bash deploy/build-image.sh tag`) instead of building one per test.
package composetest
