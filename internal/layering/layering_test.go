package layering

import (
	"os/exec"
	"sort"
	"strings"
	"testing"
)

// runtimePatterns are the packages a worker or coordinator binary is made
// of, besides cmd.
var runtimePatterns = []string{"stagecoach/worker/...", "stagecoach/coordinator/...", "stagecoach/internal/..."}

// forbidden says whether the runtime must not import path: the simulator
// (and what only it uses) and plotting libraries.
func forbidden(path string) bool {
	return path == "stagecoach/sim" || strings.HasPrefix(path, "stagecoach/sim/") ||
		path == "gonum.org/v1/plot" || strings.HasPrefix(path, "gonum.org/v1/plot/") ||
		strings.HasPrefix(path, "github.com/go-echarts/") || strings.HasPrefix(path, "github.com/wcharczuk/go-chart")
}

func goTool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("no go command on PATH to list imports with: %v", err)
	}
	return p
}

// graph lists patterns' packages and every package they depend on, with
// each one's direct imports (test files left out: they are not linked).
func graph(t *testing.T, patterns ...string) (roots []string, imports map[string][]string) {
	t.Helper()
	gocmd := goTool(t)
	out, err := exec.Command(gocmd, append([]string{"list", "-e", "-f", "{{.ImportPath}}"}, patterns...)...).Output()
	if err != nil {
		t.Fatalf("go list %v: %v", patterns, err)
	}
	roots = strings.Fields(string(out))
	out, err = exec.Command(gocmd, append([]string{"list", "-e", "-deps", "-f", "{{.ImportPath}}{{range .Imports}} {{.}}{{end}}"}, patterns...)...).Output()
	if err != nil {
		t.Fatalf("go list -deps %v: %v", patterns, err)
	}
	imports = map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) > 0 {
			imports[f[0]] = f[1:]
		}
	}
	return roots, imports
}

// violations returns, for every root that reaches a forbidden package,
// the import chain from the root to it.
func violations(roots []string, imports map[string][]string) []string {
	var out []string
	for _, root := range roots {
		prev := map[string]string{root: ""}
		queue := []string{root}
		for len(queue) > 0 {
			p := queue[0]
			queue = queue[1:]
			if forbidden(p) {
				chain := []string{p}
				for q := prev[p]; q != ""; q = prev[q] {
					chain = append(chain, q)
				}
				for i, j := 0, len(chain)-1; i < j; i, j = i+1, j-1 {
					chain[i], chain[j] = chain[j], chain[i]
				}
				out = append(out, strings.Join(chain, " -> "))
				break
			}
			for _, q := range imports[p] {
				if _, seen := prev[q]; !seen {
					prev[q] = p
					queue = append(queue, q)
				}
			}
		}
	}
	sort.Strings(out)
	return out
}

func TestRuntimeLinksNeitherSimulatorNorPlotting(t *testing.T) {
	roots, imports := graph(t, runtimePatterns...)
	if len(roots) < 5 {
		t.Fatalf("go list found only %v under %v", roots, runtimePatterns)
	}
	for _, v := range violations(roots, imports) {
		t.Errorf("runtime package imports what it must not: %s", v)
	}
}

// The check finds what it looks for: the command, which runs the
// simulator, reaches it.
func TestLayeringCheckSeesTheSimulatorInCmd(t *testing.T) {
	roots, imports := graph(t, "stagecoach/cmd/stagecoach")
	v := violations(roots, imports)
	if len(v) != 1 || !strings.HasPrefix(v[0], "stagecoach/cmd/stagecoach -> ") {
		t.Fatalf("violations of cmd/stagecoach: %v, want one chain from it to the simulator or a plotting library", v)
	}
}
