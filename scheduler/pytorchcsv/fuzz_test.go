package pytorchcsv

import (
	"bytes"
	"strings"
	"testing"

	"stagecoach/scheduler"
)

// Hardening: the importer takes files people write by hand or that tools
// emit, so a malformed or hostile one must give an error, never a panic
// or a hang.

// FuzzPyTorchCSV: whatever the importer accepts exports, in both
// dialects, to a CSV that imports to the same plan and exports the same.
func FuzzPyTorchCSV(f *testing.F) {
	for _, name := range []string{"gpipe", "1f1b", "interleaved", "zb-h1", "zb-h2", "interleaved-zb", "zb-v", "dualpipe-v"} {
		plan, err := scheduler.Generate(name, scheduler.Spec{Stages: 3, Microbatches: 4})
		if err != nil {
			f.Fatal(err)
		}
		for _, d := range []Dialect{DialectNew, DialectOld} {
			var b bytes.Buffer
			if err := Export(&b, plan, d); err != nil {
				f.Fatal(err)
			}
			f.Add(b.String())
		}
	}
	for _, s := range []string{zbNewCSV, zbOldCSV, fullNew, fullOld,
		"0UNSHARD,0F0,0SEND_F0,0RECV_B0,0B0,0RESHARD\n1RECV_F0,(1F0;1B0)OVERLAP_F_B,1SEND_B0\n",
		"0F0,\"0B0\n", "0F99999999,0B0\n", ",,,\n\n,\n", "0F0,3F0,3B0,0B0\n1F0,2F0,2B0,1B0\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		p, err := Import(strings.NewReader(in), Options{})
		if err != nil {
			if !strings.HasPrefix(err.Error(), "pytorch csv: ") {
				t.Fatalf("error without the pytorch csv prefix: %v", err)
			}
			return
		}
		for _, d := range []Dialect{DialectNew, DialectOld} {
			var one bytes.Buffer
			if err := Export(&one, p, d); err != nil {
				t.Fatalf("imported plan does not export (%s): %v", d, err)
			}
			q, err := Import(bytes.NewReader(one.Bytes()), Options{Recompute: p.Recompute})
			if err != nil {
				t.Fatalf("export (%s) does not import: %v\n%s", d, err, one.Bytes())
			}
			if planJSON(t, p) != planJSON(t, q) {
				t.Fatalf("export (%s) imports to another plan:\n%s", d, one.Bytes())
			}
			var two bytes.Buffer
			if err := Export(&two, q, d); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(one.Bytes(), two.Bytes()) {
				t.Fatalf("export (%s) changed:\n%s\nvs\n%s", d, one.Bytes(), two.Bytes())
			}
		}
	})
}
