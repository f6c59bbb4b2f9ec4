package worker_test

import (
	"bytes"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"stagecoach/model"
	"stagecoach/worker"
	"stagecoach/worker/workertest"
)

// With the ring or direct all-reduce (the choice of SkipPipe plans; the
// classic schedules reduce in microbatch order and are bit-identical to
// the trainer, see TestPipelineMatchesTrainerBitForBit) each replica sums
// its own microbatches and the all-reduce adds the partial sums, so
// float32 additions are regrouped relative to the trainer's single
// ascending sum (see allreduce.go): results agree to rounding. These bounds
// are generous multiples of what was observed; replicas among themselves
// must agree bit for bit.
const (
	replicaLossRelTol  = 1e-5
	replicaParamAbsTol = 1e-4
)

func TestRingAndDirectReplicasMatchTrainerWithinRounding(t *testing.T) {
	for _, su := range []setup{
		{schedule: "gpipe", stages: 2, replicas: 2, mbs: 4, size: 2, layers: 4, allReduce: "ring"},
		{schedule: "1f1b", stages: 2, replicas: 2, mbs: 6, size: 2, layers: 4, allReduce: "ring"},
		{schedule: "gpipe", stages: 1, replicas: 3, mbs: 6, size: 1, layers: 2, allReduce: "ring"},
		{schedule: "gpipe", stages: 1, replicas: 3, mbs: 6, size: 1, layers: 2, allReduce: "direct"},
	} {
		t.Run(su.String(), func(t *testing.T) {
			const steps = 4
			c, d, ref := distributed(t, su, steps, func(step int, got *workertest.Result, want model.StepResult) {
				if rel := math.Abs(got.Loss-want.Loss) / math.Abs(want.Loss); rel > replicaLossRelTol {
					t.Errorf("step %d: loss %v, trainer %v (rel %g)", step, got.Loss, want.Loss, rel)
				}
				if rel := math.Abs(got.GradNorm-want.GradNorm) / want.GradNorm; rel > replicaLossRelTol {
					t.Errorf("step %d: grad norm %v, trainer %v (rel %g)", step, got.GradNorm, want.GradNorm, rel)
				}
			})
			got, want := checkpointParams(t, c, d, steps), referenceParams(ref)
			var worst float64
			for name, w := range want {
				if strings.HasPrefix(name, "optim.") {
					continue // moments of near-zero gradients are relatively noisy; weights are what matter
				}
				g := got[name]
				if len(g) != len(w) {
					t.Fatalf("%s: %d elements, want %d", name, len(g), len(w))
				}
				for i := range w {
					worst = max(worst, math.Abs(float64(g[i])-float64(w[i])))
				}
			}
			t.Logf("largest weight difference to the trainer after %d steps: %g", steps, worst)
			if worst > replicaParamAbsTol {
				t.Errorf("weights differ from the trainer by %g > %g", worst, replicaParamAbsTol)
			}
			sameAcrossReplicas(t, c, d, steps)
		})
	}
}

// sameAcrossReplicas checks that replicas of a stage wrote byte-identical
// checkpoints: the all-reduce gave every replica the same bits.
func sameAcrossReplicas(t *testing.T, c *workertest.Cluster, d *workertest.Driver, step int64) {
	t.Helper()
	for st, ws := range d.Plan.StageWorkers() {
		var first []byte
		for _, w := range ws {
			b, err := os.ReadFile(filepath.Join(worker.StepDir(filepath.Join(c.Dirs[w], "ckpt"), step), model.ShardFile(st)))
			if err != nil {
				t.Fatal(err)
			}
			if first == nil {
				first = b
			} else if !bytes.Equal(first, b) {
				t.Errorf("stage %d: replica on worker %d differs from replica on worker %d", st, w, ws[0])
			}
		}
	}
}
