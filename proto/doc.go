// Package proto holds the gRPC services and messages spoken between the
// coordinator and workers, and between workers. Generated code lives beside
// the .proto files.
package proto
