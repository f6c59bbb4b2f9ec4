package worker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"path/filepath"

	"stagecoach/compute"
	"stagecoach/compute/builtin"
	"stagecoach/internal/memprobe"
	"stagecoach/internal/transport"
	"stagecoach/model"
)

// Config is one worker's static configuration. New validates it; zero
// optional fields take defaults.
type Config struct {
	// Name identifies the worker in logs, Status and (for the coordinator)
	// etcd. Required.
	Name string
	// Listen is the address the gRPC server (Worker and Peer services)
	// listens on, e.g. "127.0.0.1:0". Required.
	Listen string
	// Job is the job id every fence must carry. Required: a default job id
	// let the incumbent's jobs overwrite each other (DESIGN 7a).
	Job string
	// DataDir is the worker's own directory. Required.
	DataDir string
	// CheckpointRoot confines checkpoints: SaveCheckpoint and
	// LoadCheckpoint refuse a directory outside it (through symlinks
	// too), and relative directories in requests resolve under it.
	// Default DataDir; with a shared checkpoint directory (stagecoach up,
	// compose) it is the coordinator's.
	CheckpointRoot string
	// Transport tunes tensor streaming; MaxTensorBytes is the receive
	// limit per tensor.
	Transport transport.Options
	// TLS, when set, is the node's mutual TLS configuration
	// (tlsx.Load): the gRPC server then requires a client certificate
	// signed by its CA from every caller (coordinator, peers, probes), and
	// the worker presents its certificate when it streams tensors to its
	// peers. nil serves and dials plaintext.
	TLS *tls.Config
	// Leader, when set, is the job's election as etcd shows it
	// (etcdx.WatchLeader): a control request is admitted only under the
	// current leader's revision. nil is the mode without an election
	// (tests that drive workers directly): the highest revision admitted
	// so far wins, so a forged larger one would be adopted. The CLI
	// always sets it.
	Leader LeaderSource
	// MailboxBytes bounds the tensors received but not yet consumed
	// (1 GiB). A full mailbox stalls the senders' streams (back-pressure);
	// one tensor is always admitted so progress is possible.
	MailboxBytes int64
	// MaxControlBytes bounds one control message such as a plan or an
	// iteration's data (64 MiB).
	MaxControlBytes int
	// NextEpochBytes and NextEpochTensors bound the tensors of the next
	// plan epoch waiting for their Configure (256 MiB, 64): past them a
	// next-epoch tensor is refused, and a Configure drops the ones of
	// epochs it supersedes. Tensors of later epochs are always refused.
	NextEpochBytes   int64
	NextEpochTensors int
	// PeerBytes bounds the bytes one peer's tensors may hold in the
	// mailbox (512 MiB); PeerStreams its concurrent tensor streams (8; a
	// worker sends to each peer one tensor at a time). A peer is the
	// worker identity in its certificate's URI SAN, else its connection.
	PeerBytes   int64
	PeerStreams int
	// Model bounds the model a Configure may build (model.DefaultLimits).
	Model model.Limits
	// Backend computes the worker's stages. nil: the built-in Go model
	// in this process (builtin.Backend bounded by Model). The worker
	// closes the stages it loads, not the backend: whoever made it
	// closes it after the worker stops.
	Backend compute.Backend
	// EmulateSpeed, in (0, 1), makes the worker emulate a node of that
	// compute speed, to measure heterogeneous clusters on one machine:
	// after each compute action (forward, loss, backward) it waits until
	// the action has taken its compute time / EmulateSpeed (emulate.go:
	// CPU time with the built-in backend, wall time otherwise). It is an
	// emulation, like the link shaping: 0 (or 1) computes at the
	// machine's own speed.
	EmulateSpeed float64
	// MemoryProbe, when set, measures the live Go heap after every action
	// (a full collection each: slow, for measurements) and reports each
	// iteration's peak over the probe's baseline (taken again at the
	// first Configure, before any model loads) in a log line and the
	// stagecoach_worker_heap_peak_bytes gauge. It sees this process only:
	// a backend process's memory is not in it.
	MemoryProbe *memprobe.Probe
	// Logf receives rejections and failures; nil means log.Printf.
	Logf func(format string, args ...any)
	// Infof receives notable events that are not failures (which links
	// the worker emulates); nil means Logf.
	Infof func(format string, args ...any)
}

// Defaults for Config.
const (
	DefaultMailboxBytes     = 1 << 30
	DefaultMaxControlBytes  = 64 << 20
	DefaultNextEpochBytes   = 256 << 20
	DefaultNextEpochTensors = 64
	DefaultPeerBytes        = 512 << 20
	DefaultPeerStreams      = 8
)

func (c Config) withDefaults() (Config, error) {
	switch {
	case c.Name == "":
		return c, errors.New("worker: config: name is required")
	case c.Listen == "":
		return c, errors.New("worker: config: listen address is required")
	case c.Job == "":
		return c, errors.New("worker: config: job id is required")
	case c.DataDir == "":
		return c, errors.New("worker: config: data dir is required")
	case c.MailboxBytes < 0 || c.MaxControlBytes < 0 || c.NextEpochBytes < 0 || c.NextEpochTensors < 0 || c.PeerBytes < 0 || c.PeerStreams < 0:
		return c, fmt.Errorf("worker: config: negative limits (mailbox %d, control %d, next epoch %d bytes %d tensors, peer %d bytes %d streams)",
			c.MailboxBytes, c.MaxControlBytes, c.NextEpochBytes, c.NextEpochTensors, c.PeerBytes, c.PeerStreams)
	}
	if !(c.EmulateSpeed >= 0 && c.EmulateSpeed <= 1) {
		return c, fmt.Errorf("worker: config: emulated speed %v, want a fraction in (0, 1] of the machine's (0: off)", c.EmulateSpeed)
	}
	c.Transport = c.Transport.WithDefaults()
	if err := c.Transport.Validate(); err != nil {
		return c, fmt.Errorf("worker: config: %w", err)
	}
	if c.MailboxBytes == 0 {
		c.MailboxBytes = DefaultMailboxBytes
	}
	if c.MaxControlBytes == 0 {
		c.MaxControlBytes = DefaultMaxControlBytes
	}
	if c.NextEpochBytes == 0 {
		c.NextEpochBytes = DefaultNextEpochBytes
	}
	if c.NextEpochTensors == 0 {
		c.NextEpochTensors = DefaultNextEpochTensors
	}
	if c.PeerBytes == 0 {
		c.PeerBytes = DefaultPeerBytes
	}
	if c.PeerStreams == 0 {
		c.PeerStreams = DefaultPeerStreams
	}
	if c.PeerBytes < c.Transport.MaxTensorBytes {
		return c, fmt.Errorf("worker: config: peer bytes %d below the largest tensor (%d): no tensor could ever be received", c.PeerBytes, c.Transport.MaxTensorBytes)
	}
	lim, err := c.Model.WithDefaults()
	if err != nil {
		return c, fmt.Errorf("worker: config: %w", err)
	}
	c.Model = lim
	if c.Backend == nil {
		c.Backend = builtin.Backend{Limits: lim}
	}
	if c.Logf == nil {
		c.Logf = log.Printf
	}
	if c.Infof == nil {
		c.Infof = c.Logf
	}
	abs, err := filepath.Abs(c.DataDir)
	if err != nil {
		return c, fmt.Errorf("worker: config: data dir: %w", err)
	}
	c.DataDir = abs
	if c.CheckpointRoot == "" {
		c.CheckpointRoot = abs
	}
	if c.CheckpointRoot, err = filepath.Abs(c.CheckpointRoot); err != nil {
		return c, fmt.Errorf("worker: config: checkpoint root: %w", err)
	}
	return c, nil
}

// LeaderSource tells a worker which coordinator leads its job, as the
// election says; etcdx.LeaderWatch is the production one. Implementations
// are safe for concurrent use.
type LeaderSource interface {
	// Changes returns the revision of the current leader's key as last
	// seen (0: no leader) and a channel closed once the election names
	// another leader (or none).
	Changes() (int64, <-chan struct{})
	// Refresh reads the election again and returns the current leader's
	// revision, for a fence the last seen one does not explain.
	Refresh(ctx context.Context) (int64, error)
}
