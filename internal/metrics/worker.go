package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Reasons a worker refuses a peer's tensor, the reason label of
// stagecoach_worker_tensors_rejected_total.
const (
	// RejectStaleEpoch: the tensor's plan epoch is older than the worker's.
	RejectStaleEpoch = "stale_epoch"
	// RejectFutureEpoch: the tensor's plan epoch is beyond the next one.
	RejectFutureEpoch = "future_epoch"
	// RejectQueueFull: a receive bound is reached (the next-epoch queue,
	// a peer's streams or bytes).
	RejectQueueFull = "queue_full"
	// RejectStaleLeader: the tensor's fence carries a deposed leader's token.
	RejectStaleLeader = "stale_leader"
	// RejectWrongJob: the fence names another job.
	RejectWrongJob = "wrong_job"
	// RejectNoFence: the tensor carries no fence.
	RejectNoFence = "no_fence"
	// RejectBadShape: the shape disagrees with its payload, the model or
	// the consuming action.
	RejectBadShape = "bad_shape"
	// RejectBadInput: inconsistent with the plan (wrong sender, stage or
	// microbatch, a duplicate).
	RejectBadInput = "bad_input"
	// RejectOversize: larger than the receive limit.
	RejectOversize = "oversize"
	// RejectMalformed: a stream that breaks the wire format.
	RejectMalformed = "malformed"
	// RejectOther: any other refusal.
	RejectOther = "other"
)

// Reasons a worker refuses a call by authorization, the reason label of
// stagecoach_worker_calls_denied_total.
const (
	// DenyNoCertificate: the caller presented no verified certificate
	// (only under mutual TLS; a plaintext worker authorizes nobody).
	DenyNoCertificate = "no_certificate"
	// DenyNoRole: the certificate carries no stagecoach role.
	DenyNoRole = "no_role"
	// DenyOtherJob: the certificate's role is in another job.
	DenyOtherJob = "other_job"
	// DenyWrongRole: a worker calling a control method, or a coordinator
	// sending tensors.
	DenyWrongRole = "wrong_role"
	// DenyWrongSender: a worker's tensor claims to come from another
	// worker of the plan.
	DenyWrongSender = "wrong_sender"
	// DenyFutureLeader: a control call whose fence names a leader
	// revision etcd does not show (yet): never adopted.
	DenyFutureLeader = "future_leader"
)

// Worker is a worker's instruments. A nil *Worker records nothing.
type Worker struct {
	actions   *prometheus.HistogramVec
	sent      prometheus.Counter
	sentBytes prometheus.Counter
	recv      prometheus.Counter
	recvBytes prometheus.Counter
	rejected  *prometheus.CounterVec
	rpcs      *prometheus.HistogramVec
	denied    *prometheus.CounterVec
	heapPeak  prometheus.Gauge
	// backendCall and backendCompute: operations through the compute
	// protocol, as the worker timed them and as the backend reported.
	backendCall    *prometheus.HistogramVec
	backendCompute *prometheus.HistogramVec
}

// NewWorker registers a worker's metrics in reg:
//
//	stagecoach_worker_action_duration_seconds{op}       time of each executed plan action (Forward, Backward, Loss, AllReduce, ...)
//	stagecoach_worker_tensors_sent_total                tensors (and all-reduce chunks) sent to peers
//	stagecoach_worker_tensor_sent_bytes_total           their payload bytes
//	stagecoach_worker_tensors_received_total            tensors received from peers and taken by an iteration
//	stagecoach_worker_tensor_received_bytes_total       their payload bytes
//	stagecoach_worker_tensors_rejected_total{reason}    peer tensors refused (stale_epoch, stale_leader, bad_shape, oversize, ...)
//	stagecoach_worker_rpc_duration_seconds{method,code} control RPCs served (Configure, RunIteration, Step, ...)
//	stagecoach_worker_calls_denied_total{method,reason} calls refused with PermissionDenied (no_certificate, wrong_role, ...)
//	stagecoach_worker_heap_peak_bytes                   the last iteration's live heap peak over the baseline (worker --memory-probe only)
//	stagecoach_worker_backend_call_seconds{op}          operations of a backend process (--backend-cmd, --backend-addr), timed by the worker
//	stagecoach_worker_backend_compute_seconds{op}       the backend's own compute time in them, as it reported it
//
// The two backend histograms' sums differ by what the compute protocol's
// round trips cost: the tensors' bytes and the hand-overs between the
// processes.
func NewWorker(reg prometheus.Registerer) *Worker {
	w := &Worker{
		actions: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "stagecoach_worker_action_duration_seconds",
			Help:    "Wall time of each plan action this worker executed, by operation.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 9),
		}, []string{"op"}),
		sent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "stagecoach_worker_tensors_sent_total",
			Help: "Tensors (activations, gradients, all-reduce chunks) this worker handed to its peers' streams.",
		}),
		sentBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "stagecoach_worker_tensor_sent_bytes_total",
			Help: "Payload bytes of the tensors this worker sent to peers.",
		}),
		recv: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "stagecoach_worker_tensors_received_total",
			Help: "Tensors received from peers and taken by an iteration.",
		}),
		recvBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "stagecoach_worker_tensor_received_bytes_total",
			Help: "Payload bytes of the tensors received from peers and taken by an iteration.",
		}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "stagecoach_worker_tensors_rejected_total",
			Help: "Peer tensors this worker refused, by reason.",
		}, []string{"reason"}),
		rpcs: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "stagecoach_worker_rpc_duration_seconds",
			Help:    "Wall time of the control RPCs this worker served, by method and gRPC status code.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
		}, []string{"method", "code"}),
		denied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "stagecoach_worker_calls_denied_total",
			Help: "Calls this worker refused with PermissionDenied (authorization or an unverifiable fence), by method and reason.",
		}, []string{"method", "reason"}),
		heapPeak: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "stagecoach_worker_heap_peak_bytes",
			Help: "The last iteration's peak live Go heap over the worker's baseline before it loaded a model, measured after every action (worker --memory-probe only).",
		}),
		backendCall: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "stagecoach_worker_backend_call_seconds",
			Help:    "Wall time of each operation of the worker's backend process, as the worker timed it, by operation.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
		}, []string{"op"}),
		backendCompute: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "stagecoach_worker_backend_compute_seconds",
			Help:    "The backend process's own compute time in each operation, as it reported it (operations it reported none for are left out), by operation.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
		}, []string{"op"}),
	}
	for _, r := range []string{RejectStaleEpoch, RejectFutureEpoch, RejectQueueFull, RejectStaleLeader, RejectWrongJob, RejectNoFence, RejectBadShape,
		RejectBadInput, RejectOversize, RejectMalformed, RejectOther} {
		w.rejected.WithLabelValues(r)
	}
	reg.MustRegister(w.actions, w.sent, w.sentBytes, w.recv, w.recvBytes, w.rejected, w.rpcs, w.denied, w.heapPeak, w.backendCall, w.backendCompute)
	return w
}

// HeapPeak records an iteration's live heap peak over the baseline.
func (w *Worker) HeapPeak(bytes uint64) {
	if w == nil {
		return
	}
	w.heapPeak.Set(float64(bytes))
}

// BackendCall records one operation of a backend process: its wall time
// and the compute time the backend reported (0: none).
func (w *Worker) BackendCall(op string, call, compute time.Duration) {
	if w == nil {
		return
	}
	w.backendCall.WithLabelValues(op).Observe(call.Seconds())
	if compute > 0 {
		w.backendCompute.WithLabelValues(op).Observe(compute.Seconds())
	}
}

// Action records one executed plan action.
func (w *Worker) Action(op string, d time.Duration) {
	if w == nil {
		return
	}
	w.actions.WithLabelValues(op).Observe(d.Seconds())
}

// TensorSent records one tensor of n payload bytes sent to a peer.
func (w *Worker) TensorSent(n int) {
	if w == nil {
		return
	}
	w.sent.Inc()
	w.sentBytes.Add(float64(n))
}

// TensorReceived records one tensor of n payload bytes taken from a peer.
func (w *Worker) TensorReceived(n int) {
	if w == nil {
		return
	}
	w.recv.Inc()
	w.recvBytes.Add(float64(n))
}

// TensorRejected counts one refused tensor.
func (w *Worker) TensorRejected(reason string) {
	if w == nil {
		return
	}
	w.rejected.WithLabelValues(reason).Inc()
}

// RPC records one served control RPC.
func (w *Worker) RPC(method, code string, d time.Duration) {
	if w == nil {
		return
	}
	w.rpcs.WithLabelValues(method, code).Observe(d.Seconds())
}

// Denied counts one call refused with PermissionDenied.
func (w *Worker) Denied(method, reason string) {
	if w == nil {
		return
	}
	w.denied.WithLabelValues(method, reason).Inc()
}
