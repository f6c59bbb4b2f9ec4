package sim

import (
	"bytes"
	"strings"
	"testing"

	"stagecoach/scheduler"
)

func TestWriteTableGolden(t *testing.T) {
	var rs []*Result
	for _, name := range []string{"gpipe", "1f1b"} {
		rs = append(rs, detailRun(t, slowLinks(), name, scheduler.Spec{Stages: 4, Microbatches: 8}))
	}
	var buf bytes.Buffer
	if err := WriteTable(&buf, rs); err != nil {
		t.Fatal(err)
	}
	checkGolden(t, "table_gpipe_1f1b_p4_m8.txt", buf.Bytes())
	lines := strings.Split(strings.TrimRight(buf.String(), "\n"), "\n")
	if len(lines) != 3 {
		t.Fatalf("%d lines, want header and 2 rows:\n%s", len(lines), buf.String())
	}
	for _, l := range lines {
		if len(l) != len(lines[0]) {
			t.Fatalf("rows not aligned:\n%s", buf.String())
		}
	}
	if strings.Contains(lines[0], "plan_time_s") {
		t.Fatal("plan_time_s shown though no result has a plan time")
	}
	rs[1].PlanTimeS = 0.00125
	buf.Reset()
	if err := WriteTable(&buf, rs); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "plan_time_s") || !strings.Contains(buf.String(), "0.00125") {
		t.Fatalf("plan time missing:\n%s", buf.String())
	}
}

func TestHumanBytes(t *testing.T) {
	for b, want := range map[float64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 1536: "1.5 KiB", 3 << 20: "3.0 MiB", 5 << 30: "5.0 GiB"} {
		if got := HumanBytes(b); got != want {
			t.Errorf("HumanBytes(%v) = %q, want %q", b, got, want)
		}
	}
}
