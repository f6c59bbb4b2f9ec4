// Package pb holds the gRPC services and messages spoken between the
// coordinator and workers (Worker) and among workers (Peer). The Go code
// beside stagecoach.proto is generated: run `make proto` after editing the
// .proto file (a test fails when the generated code is stale).
package pb
