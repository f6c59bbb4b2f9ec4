package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"testing"

	"stagecoach/compute/builtin"
	"stagecoach/model"
	pb "stagecoach/proto"
	"stagecoach/scheduler"
)

// FuzzConfigureRequest feeds arbitrary plan JSON, model JSON and link
// shaping YAML to the worker's Configure decoding (no server): it must
// refuse with ErrBadInput or accept a request whose every part agrees,
// and what it accepts must build, within the limits, without panicking.
func FuzzConfigureRequest(f *testing.F) {
	plan, err := scheduler.Generate("gpipe", scheduler.Spec{Stages: 2, Microbatches: 2, Layers: 2, Samples: 2, Nodes: []string{"a", "b"}})
	if err != nil {
		f.Fatal(err)
	}
	var pj bytes.Buffer
	if err := scheduler.Encode(&pj, plan); err != nil {
		f.Fatal(err)
	}
	mj, _ := json.Marshal(model.TrainConfig{Model: model.Config{Layers: 2, Dim: 16, Heads: 2, Ctx: 8}, Microbatches: 2, MicrobatchSize: 2})
	links := []byte("name: c\nnodes: [{name: a, region: r1}, {name: b, region: r2}]\ndefault_link: {latency_ms: 5, bandwidth_gib_s: 1}\ncompute: {layer_forward_s: 0.001}\n")
	f.Add(pj.Bytes(), mj, links, int32(1), uint8(2), false)
	f.Add(pj.Bytes(), mj, []byte(nil), int32(0), uint8(2), false)
	f.Add(pj.Bytes(), []byte(`{"model":{"layers":2,"dim":65536,"heads":2,"ctx":8}}`), []byte(nil), int32(0), uint8(2), false)
	f.Add(pj.Bytes(), mj, []byte("name: c\nany_node: true\nnodes: [{name: a, region: r1}]\ndelays: [[0]]\ncompute: {}\n"), int32(1), uint8(2), false)
	lim := model.Limits{MaxParams: 1 << 16, MaxActivationBytes: 1 << 24}
	s := &Server{cfg: Config{Name: "fuzz", Backend: builtin.Backend{Limits: lim}}}
	f.Fuzz(func(t *testing.T, planJSON, modelJSON, shaping []byte, me int32, npeers uint8, mutualTLS bool) {
		peers := make([]string, npeers)
		req := &pb.ConfigureRequest{PlanJson: planJSON, ModelJson: modelJSON, LinkShapingYaml: shaping, Worker: me, Peers: peers}
		spec, err := decodeConfigure(req, lim, mutualTLS)
		if err != nil {
			if !isBadInput(err) {
				t.Fatalf("refusal is not ErrBadInput: %v", err)
			}
			return
		}
		p := spec.plan
		if spec.me < 0 || spec.me >= len(p.Workers) || len(peers) != len(p.Workers) || p.Layers() != spec.train.Model.Layers ||
			(mutualTLS || len(spec.names) > 0) && len(spec.names) != len(p.Workers) {
			t.Fatalf("accepted an inconsistent request: worker %d of %d, %d peers, %d vs %d layers", spec.me, len(p.Workers), len(peers), p.Layers(), spec.train.Model.Layers)
		}
		if n := model.NumParams(spec.train.Model); n > lim.MaxParams {
			t.Fatalf("accepted a model of %d parameters, limit %d", n, lim.MaxParams)
		}
		for _, id := range p.Workers[spec.me].Stages {
			st, _, err := s.buildStage(context.Background(), p, spec.train, id, nil, &job{})
			if err != nil {
				t.Fatalf("accepted request does not build stage %d: %v", id, err)
			}
			_ = st.cs.Close()
		}
	})
}

func isBadInput(err error) bool { return errors.Is(err, ErrBadInput) }
