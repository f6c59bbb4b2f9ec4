package sim

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// FuzzParseCluster feeds arbitrary YAML to the cluster decoder (sim's
// --cluster, the coordinator's --cluster, a worker's link shaping): it
// must refuse or accept without panicking, and a cluster it accepts must
// encode and decode to itself and price a hop between any two nodes.
func FuzzParseCluster(f *testing.F) {
	seeds, _ := filepath.Glob("../deploy/*.yaml")
	for _, p := range seeds {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	for _, name := range PresetNames() {
		c, err := Preset(name)
		if err != nil {
			f.Fatal(err)
		}
		var buf bytes.Buffer
		if err := EncodeCluster(&buf, c); err != nil {
			f.Fatal(err)
		}
		f.Add(buf.Bytes())
	}
	f.Add([]byte("name: x\nnodes: [{name: a, region: r1}, {name: b, region: r2}]\ncompute: {layer_forward_s: 1}\n"))
	f.Add([]byte("a: &a [*a, *a]\n"))
	f.Add([]byte("name: x\nany_node: true\ndelays: [[0, 1], [1, 0]]\nnodes: [{name: a}, {name: b}]\n"))
	f.Add([]byte("name: x\ndefault_memory_gib: 8\nmodel: {dim: 64, heads: 4, optimizer: sgd, stage_activation_bytes_per_sample: [1, 2]}\nnodes: [{name: a, memory_gib: 0.5}, {name: b}]\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseCluster(b)
		if err != nil {
			return
		}
		var buf bytes.Buffer
		if err := EncodeCluster(&buf, c); err != nil {
			t.Fatalf("accepted cluster does not encode: %v", err)
		}
		c2, err := ParseCluster(buf.Bytes())
		if err != nil {
			t.Fatalf("encoded cluster does not decode: %v\n%s", err, buf.Bytes())
		}
		if len(c2.Nodes) != len(c.Nodes) || c2.Name != c.Name {
			t.Fatalf("round trip changed the cluster: %d vs %d nodes", len(c2.Nodes), len(c.Nodes))
		}
		for a := range min(len(c.Nodes), 4) {
			for b := range min(len(c.Nodes), 4) {
				busy, lat := c.HopTime(a, b, 1<<20)
				if busy < 0 || lat < 0 {
					t.Fatalf("hop %d->%d: busy %v latency %v", a, b, busy, lat)
				}
			}
		}
	})
}
