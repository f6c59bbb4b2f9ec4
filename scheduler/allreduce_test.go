package scheduler

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// The per-stage all-reduce algorithm survives a JSON round trip, an old
// plan without the field still decodes (as ring), and an unknown value is
// refused naming the stage and the rule.
func TestAllReduceFieldJSON(t *testing.T) {
	p, err := Generate("1f1b", Spec{Stages: 2, Microbatches: 4, Replicas: 3})
	if err != nil {
		t.Fatal(err)
	}
	p.Stages[0].AllReduce = AllReduceDirect
	p.Stages[1].AllReduce = AllReduceRing
	var b bytes.Buffer
	if err := Encode(&b, p); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), `"all_reduce": "direct"`) || !strings.Contains(b.String(), `"all_reduce": "ring"`) {
		t.Fatalf("encoded plan lacks the all_reduce fields:\n%s", b.String())
	}
	q, err := DecodeBytes(b.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if got := []string{q.Stages[0].AllReduce, q.Stages[1].AllReduce}; got[0] != AllReduceDirect || got[1] != AllReduceRing {
		t.Errorf("decoded all_reduce %q, want [direct ring]", got)
	}
	var again bytes.Buffer
	if err := Encode(&again, q); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b.Bytes(), again.Bytes()) {
		t.Error("encode, decode, encode changed the plan")
	}

	// A plan written before the field existed: no all_reduce anywhere.
	p.Stages[0].AllReduce, p.Stages[1].AllReduce = "", ""
	b.Reset()
	if err := Encode(&b, p); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(b.String(), "all_reduce") {
		t.Fatalf("an unset algorithm is written:\n%s", b.String())
	}
	old, err := DecodeBytes(b.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	for s, st := range old.Stages {
		if st.AllReduce != "" || st.AllReduceAlgorithm() != AllReduceRing {
			t.Errorf("stage %d of an old plan: all_reduce %q (%q), want empty (ring)", s, st.AllReduce, st.AllReduceAlgorithm())
		}
	}

	bad := strings.Replace(again.String(), `"all_reduce": "ring"`, `"all_reduce": "tree"`, 1)
	_, err = DecodeBytes([]byte(bad))
	var ve *ValidationError
	if !errors.As(err, &ve) || ve.Rule != RuleAllReduce {
		t.Fatalf("unknown algorithm: got %v, want a %s ValidationError", err, RuleAllReduce)
	}
	if msg := err.Error(); !strings.Contains(msg, "stage 1") || !strings.Contains(msg, `"tree"`) || !strings.Contains(msg, RuleAllReduce) {
		t.Errorf("error %q does not name the stage, the value and the rule", msg)
	}
}

func TestOverrideAllReduce(t *testing.T) {
	p, err := Generate("gpipe", Spec{Stages: 2, Replicas: 2, Microbatches: 4})
	if err != nil {
		t.Fatal(err)
	}
	one, err := Generate("gpipe", Spec{Stages: 2, Microbatches: 4})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ alg, want string }{
		{"", AllReduceOrdered}, {AllReduceAuto, ""}, {AllReduceDirect, AllReduceDirect},
		{AllReduceRing, AllReduceRing}, {AllReduceOrdered, AllReduceOrdered},
	} {
		if err := OverrideAllReduce(p, tc.alg); err != nil {
			t.Fatalf("%q: %v", tc.alg, err)
		}
		for s, st := range p.Stages {
			if st.AllReduce != tc.want {
				t.Errorf("override %q: stage %d all-reduces by %q, want %q", tc.alg, s, st.AllReduce, tc.want)
			}
		}
		if err := Validate(p); err != nil {
			t.Errorf("override %q: %v", tc.alg, err)
		}
		// Stages with one replica have nothing to reduce: left alone.
		if err := OverrideAllReduce(one, tc.alg); err != nil || one.Stages[0].AllReduce != "" {
			t.Errorf("override %q on single replicas: %v, stage 0 says %q", tc.alg, err, one.Stages[0].AllReduce)
		}
	}
	if err := OverrideAllReduce(p, "tree"); err == nil {
		t.Error(`override "tree" accepted`)
	}
}
