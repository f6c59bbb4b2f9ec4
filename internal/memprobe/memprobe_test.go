package memprobe

import "testing"

// TestProbeSeesWhatIsHeld: holding 8 MiB between samples shows as at
// least 8 MiB over the baseline, at the sample that saw it; once released
// and taken, the next period starts over.
func TestProbeSeesWhatIsHeld(t *testing.T) {
	p := Start()
	if _, _, ok := p.Take(); ok {
		t.Fatal("Take reported a sample before any was taken")
	}
	p.Sample("empty")
	held := make([]byte, 8<<20)
	for i := range held {
		held[i] = byte(i)
	}
	p.Sample("holding")
	b, at, ok := p.Take()
	if !ok || at != "holding" || b < 8<<20 {
		t.Fatalf("Take = %d bytes at %q (ok %v), want >= %d at \"holding\"", b, at, ok, 8<<20)
	}
	sum := 0
	for _, v := range held {
		sum += int(v)
	}
	held = nil
	p.Sample("released")
	b, at, _ = p.Take()
	if at != "released" || b >= 8<<20 {
		t.Fatalf("after release: %d bytes at %q, want < %d (sum %d)", b, at, 8<<20, sum)
	}
	var nilProbe *Probe
	nilProbe.Sample("x")
	if _, _, ok := nilProbe.Take(); ok {
		t.Fatal("a nil probe reported a sample")
	}
}
