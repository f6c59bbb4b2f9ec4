package costmodel

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

const referenceDir = "../../shared/reference"

func TestSkipPipeGeoPresetMatchesAuthorsDelays(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(referenceDir, "skippipe-geo-schedule.json"))
	if err != nil {
		t.Skipf("SkipPipe reference data not available (%v); skipping the comparison with the authors' delays", err)
	}
	var ref struct {
		Delays    [][]float64 `json:"delays"`
		Locations []string    `json:"locations"`
	}
	if err := json.Unmarshal(data, &ref); err != nil {
		t.Fatal(err)
	}
	c := SkipPipeGeo()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	bytes := float64(c.Workload.SamplesPerMicrobatch)*c.Compute.ActivationBytesPerSample + c.Compute.MessageHeaderBytes
	for i := range c.Nodes {
		if c.Nodes[i].Region != ref.Locations[i] {
			t.Fatalf("node %d in %s, authors put it in %s", i, c.Nodes[i].Region, ref.Locations[i])
		}
		for j := range c.Nodes {
			if i == j {
				continue
			}
			busy, lat := c.hop(i, j, &c.Nodes[i], &c.Nodes[j], bytes)
			if got, want := busy+lat, ref.Delays[i][j]; math.Abs(got-want) > 1e-9 {
				t.Fatalf("hop %d->%d (%s->%s) costs %.9f s, authors' delay %.9f s", i, j, c.Nodes[i].Region, c.Nodes[j].Region, got, want)
			}
		}
	}
}

func TestParseClusterErrors(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{"", "empty"},
		{"name: x\nnodes: [{name: a, region: r1}, {name: b, region: r2}]\ncompute: {layer_forward_s: 1}\n", `no link between regions "r1" and "r2"`},
		{"name: x\nany_node: true\ncompute: {layer_forward_s: -1}\n", "compute.layer_forward_s is -1"},
		{"name: x\nany_node: true\nbogus: 1\n", `line 3: unknown key "bogus" at the top level`},
		{"name: x\nany_node: true\nlinks: [{a: r1, b: r2, latency_ms: 1, bandwith_gib_s: 1}]\n", `line 3: unknown key "bandwith_gib_s" in links[0] (did you mean "bandwidth_gib_s"?)`},
		{"name: x\nnodes: [{name: a}, {name: a}]\n", `node "a" listed twice`},
		{"name: x\nnodes: [{name: a, region: r1}, {name: b, region: r2}]\nlinks: [{a: r1, b: r2, latency_ms: 1, bandwidth_gib_s: 0}]\n", "bandwidth_gib_s is 0"},
		{"name: x\nnodes: [{name: a}]\ndelays: [[0, 1]]\n", "delays[0] has 2 entries"},
	} {
		_, err := ParseCluster([]byte(tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseCluster(%q) = %v, want an error containing %q", tc.yaml, err, tc.want)
		}
	}
}

func TestClusterYAMLRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	if err := EncodeCluster(&buf, SkipPipeGeo()); err != nil {
		t.Fatal(err)
	}
	c, err := ParseCluster(buf.Bytes())
	if err != nil {
		t.Fatalf("%v\n%s", err, buf.String())
	}
	if len(c.Nodes) != 20 || len(c.Links) != 66 || c.Workload == nil || c.Workload.Layers != 24 {
		t.Fatalf("round trip lost data: %d nodes, %d links, workload %+v", len(c.Nodes), len(c.Links), c.Workload)
	}
}

// A cluster file larger than the bound (here a sparse 10 GB one) is
// refused after reading one byte past the bound, not read whole.
func TestLoadClusterRefusesHugeFiles(t *testing.T) {
	path := filepath.Join(t.TempDir(), "huge.yaml")
	if err := os.WriteFile(path, []byte("name: x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, 10<<30); err != nil {
		t.Skipf("no sparse files here: %v", err)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := LoadCluster(path)
	runtime.ReadMemStats(&after)
	if err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("10 GB cluster file: %v", err)
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 4*maxClusterBytes {
		t.Errorf("refusing it allocated %d bytes", grew)
	}
}
