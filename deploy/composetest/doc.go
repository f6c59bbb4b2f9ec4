// Package composetest holds the end-to-end tests of the top-level
// docker-compose.yml, which runs every hop over mutual TLS. One brings the
// whole cluster up (three etcd members, two coordinators, five workers),
// stops the leader coordinator and kills a plan worker mid-run, and checks
// in etcd that the job still committed every step exactly once; the other
// saturates the host's cores with busy loops during a run and checks that
// the load is not taken for a fault (one leader, one plan throughout).
// Both check that the coordinators end with status 0.
//
// They need a Docker engine and docker-compose v1. Without an engine they
// skip, unless STAGECOACH_REQUIRE_DOCKER=1 (CI sets it), where that is a
// failure. `go test -short` skips them too: they take minutes. The first
// test builds an image of the working tree, which both use;
// STAGECOACH_COMPOSE_IMAGE=tag runs them on an image already built
// (`bash deploy/build-image.sh tag`) instead.
package composetest
