// Package deps pins the module's dependencies while the packages that use them are written.
package deps

import (
	_ "github.com/schollz/progressbar/v3"
	_ "github.com/spf13/cobra"
	_ "go.etcd.io/etcd/client/v3"
	_ "go.etcd.io/etcd/server/v3/embed"
	_ "go.yaml.in/yaml/v3"
	_ "gonum.org/v1/gonum/mat"
	_ "google.golang.org/grpc"
	_ "google.golang.org/protobuf/proto"
)
