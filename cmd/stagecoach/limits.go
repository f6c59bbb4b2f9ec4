package main

import (
	"github.com/spf13/pflag"

	"stagecoach/worker"
)

// workerLimits are the flags of a worker's receive and model bounds
// (docs/security-limits.md); zero keeps the library's default.
type workerLimits struct {
	maxTensorBytes, mailboxBytes, nextEpochBytes, peerBytes int64
	nextEpochTensors, peerStreams                           int
	maxParams, maxActivationBytes                           int64
}

func (l *workerLimits) register(f *pflag.FlagSet) {
	f.Int64Var(&l.maxTensorBytes, "max-tensor-bytes", 0, "largest tensor a peer may send (0: 256 MiB)")
	f.Int64Var(&l.mailboxBytes, "mailbox-bytes", 0, "bytes of received tensors held before senders are stalled (0: 1 GiB)")
	f.Int64Var(&l.nextEpochBytes, "next-epoch-bytes", 0, "bytes of next-epoch tensors held before more are refused (0: 256 MiB)")
	f.IntVar(&l.nextEpochTensors, "next-epoch-tensors", 0, "next-epoch tensors held before more are refused (0: 64)")
	f.Int64Var(&l.peerBytes, "peer-bytes", 0, "bytes one peer's tensors may hold (0: 512 MiB)")
	f.IntVar(&l.peerStreams, "peer-streams", 0, "concurrent tensor streams of one peer (0: 8)")
	f.Int64Var(&l.maxParams, "max-model-params", 0, "largest model (parameters) a Configure may ask for (0: 2^28)")
	f.Int64Var(&l.maxActivationBytes, "max-activation-bytes", 0, "largest estimated activation memory of one microbatch (0: 4 GiB)")
}

// apply sets the limits in c.
func (l *workerLimits) apply(c *worker.Config) {
	c.Transport.MaxTensorBytes = l.maxTensorBytes
	c.MailboxBytes, c.NextEpochBytes, c.NextEpochTensors = l.mailboxBytes, l.nextEpochBytes, l.nextEpochTensors
	c.PeerBytes, c.PeerStreams = l.peerBytes, l.peerStreams
	c.Model.MaxParams, c.Model.MaxActivationBytes = l.maxParams, l.maxActivationBytes
}
