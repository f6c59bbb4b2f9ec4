// Package metricstest scrapes a Stagecoach /metrics endpoint over HTTP
// (or gathers a registry in process) in tests and looks series up by name
// and labels.
package metricstest

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Samples maps a series, written as the text format prints it
// (`name{a="x",b="y"}`, labels in name order), to its value.
type Samples map[string]float64

// Series writes name and label pairs (label, value, label, value, ...) as
// a Samples key.
func Series(name string, labels ...string) string {
	if len(labels) == 0 {
		return name
	}
	type kv struct{ k, v string }
	var ls []kv
	for i := 0; i+1 < len(labels); i += 2 {
		ls = append(ls, kv{labels[i], labels[i+1]})
	}
	sort.Slice(ls, func(i, j int) bool { return ls[i].k < ls[j].k })
	parts := make([]string, len(ls))
	for i, l := range ls {
		parts[i] = fmt.Sprintf("%s=%q", l.k, l.v)
	}
	return name + "{" + strings.Join(parts, ",") + "}"
}

// Get is the value of a series; ok is false when it is absent.
func (s Samples) Get(name string, labels ...string) (float64, bool) {
	v, ok := s[Series(name, labels...)]
	return v, ok
}

// Scrape fetches url (an http://host:port/metrics address) and parses the
// text format; it fails the test on any error.
func Scrape(t testing.TB, url string) Samples {
	t.Helper()
	cli := &http.Client{Timeout: 10 * time.Second}
	resp, err := cli.Get(url)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("scrape %s: %s: %s", url, resp.Status, b)
	}
	s, err := Parse(resp.Body)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	return s
}

// Parse reads the Prometheus text format (comments skipped, no
// timestamps expected).
func Parse(r io.Reader) (Samples, error) {
	out := Samples{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			return nil, fmt.Errorf("metrics line without a value: %q", line)
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("metrics line %q: %w", line, err)
		}
		out[line[:i]] = v
	}
	return out, sc.Err()
}

// Gather reads the counters and gauges of a registry in process, keyed as
// Scrape keys them; it fails the test on any error.
func Gather(t testing.TB, g prometheus.Gatherer) Samples {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatalf("gather metrics: %v", err)
	}
	out := Samples{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName(), l.GetValue())
			}
			switch {
			case m.GetCounter() != nil:
				out[Series(mf.GetName(), labels...)] = m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				out[Series(mf.GetName(), labels...)] = m.GetGauge().GetValue()
			}
		}
	}
	return out
}

// Value is the value of one series of a registry (Gather, then Get); it
// fails the test when the series is absent.
func Value(t testing.TB, g prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	v, ok := Gather(t, g).Get(name, labels...)
	if !ok {
		t.Fatalf("no series %s", Series(name, labels...))
	}
	return v
}
