package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"stagecoach/internal/atomicfile"
	"stagecoach/internal/etcdx"
	"stagecoach/internal/jobview"
	"stagecoach/internal/tlsx"
)

func init() { rootCmd.AddCommand(newStatusCmd()) }

// upStateFile is where `up` records how to reach the job it runs.
const upStateFile = "up.json"

// upState is what `up` records in its --out directory for `status --out`.
type upState struct {
	PID       int       `json:"pid"`
	Job       string    `json:"job"`
	Endpoints []string  `json:"endpoints"`
	Embedded  bool      `json:"embedded_etcd"`
	TLSDir    string    `json:"tls_dir,omitempty"`
	LiveURL   string    `json:"live_url,omitempty"`
	Started   time.Time `json:"started"`
	// InitFrom and InitWeightsOnly are the run's --init-from, which
	// `up --resume` takes again.
	InitFrom        string `json:"init_from,omitempty"`
	InitWeightsOnly bool   `json:"init_weights_only,omitempty"`
}

func (s *upState) write(dir string) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(dir, upStateFile), append(b, '\n'), atomicfile.Options{})
}

// readUpState reads dir/up.json; a missing file is reported as such.
func readUpState(dir string) (*upState, error) {
	b, err := os.ReadFile(filepath.Join(dir, upStateFile))
	if err != nil {
		return nil, err
	}
	var s upState
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, upStateFile), err)
	}
	return &s, nil
}

// alive reports whether a process with pid runs (signal 0 reaches it).
func alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

func newStatusCmd() *cobra.Command {
	var etcdFlag, job, out string
	var asJSON bool
	var timeout time.Duration
	var tf tlsFlags
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show a job as etcd holds it: leader, members, plan, last step, checkpoint, recoveries",
		Long: `Read a job's keys from etcd and show its leader and fencing token (the
revision of the leader's election key), the registered workers with their
stages and lease time left, the plan epoch, the last committed step and its
loss, the newest checkpoint and the recoveries the coordinator recorded
(re-paths, restores, rejoins, takeovers). Either --etcd and --job, or --out
DIR: the job a local 'stagecoach up --out DIR' runs or ran (its endpoints,
job id and TLS files are read from DIR/up.json). When that run's embedded
etcd is not running any more, the job is shown as it was left on disk in
DIR/etcd, marked not running. --json prints one JSON object (fields are
only ever added).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if timeout <= 0 {
				return badInput("--timeout must be positive, got %v", timeout)
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			var snap *jobview.Snapshot
			var err error
			var note string
			switch {
			case out != "" && etcdFlag != "":
				return badInput("give --out or --etcd, not both")
			case out != "":
				snap, note, err = statusOfUp(ctx, out, job, &tf, cmd.Flags().Changed("job"))
			case etcdFlag == "" || job == "":
				return badInput("give --etcd and --job, or --out DIR of a local 'stagecoach up'")
			default:
				snap, err = statusOfEtcd(ctx, etcdx.ParseEndpoints(etcdFlag), job, &tf)
			}
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(snap)
			}
			return writeStatus(os.Stdout, snap, note)
		},
	}
	f := cmd.Flags()
	f.StringVar(&etcdFlag, "etcd", "", "etcd endpoints, comma-separated host:port")
	f.StringVar(&job, "job", "", "job id (with --out: default the job up ran)")
	f.StringVar(&out, "out", "", "the --out directory of a local 'stagecoach up'")
	f.BoolVar(&asJSON, "json", false, "print the snapshot as one JSON object")
	f.DurationVar(&timeout, "timeout", 10*time.Second, "give up reading etcd after this long")
	tf.register(f)
	return cmd
}

// statusOfEtcd reads job from a running etcd.
func statusOfEtcd(ctx context.Context, eps []string, job string, tf *tlsFlags) (*jobview.Snapshot, error) {
	keys, err := etcdx.NewKeys(job)
	if err != nil {
		return nil, badInput("--job: %v", err)
	}
	tc, err := tf.load()
	if err != nil {
		return nil, err
	}
	cli, err := etcdx.DialTLS(ctx, eps, 0, tc)
	if err != nil && tc == nil {
		return nil, fmt.Errorf("%w (an etcd that serves TLS needs --tls-cert, --tls-key and --tls-ca)", err)
	}
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	return jobview.Read(ctx, jobview.NewEtcdSource(cli), keys, jobview.Options{})
}

// statusOfUp reads the job a local `up --out dir` runs, or, when its
// embedded etcd is gone, what that etcd left on disk. note is a line to
// show above the table (the live page's address).
func statusOfUp(ctx context.Context, dir, job string, tf *tlsFlags, jobSet bool) (*jobview.Snapshot, string, error) {
	st, err := readUpState(dir)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			return nil, "", err
		}
		// An up of an older version, or no up at all: its etcd data
		// may still be there.
		if _, serr := os.Stat(filepath.Join(dir, "etcd")); serr != nil {
			return nil, "", badInput("--out %s: no %s and no etcd data directory: not the --out of a 'stagecoach up'", dir, upStateFile)
		}
		st = &upState{Embedded: true}
	}
	if !jobSet {
		job = st.Job
	}
	if job == "" {
		return nil, "", badInput("--out %s: %s names no job; give --job", dir, upStateFile)
	}
	if !tf.files.Enabled() && st.TLSDir != "" {
		tf.files = tlsx.FilesFor(st.TLSDir, "coordinator")
	}
	note := ""
	if st.LiveURL != "" {
		note = "live page: " + st.LiveURL
	}
	running := alive(st.PID)
	if running && len(st.Endpoints) > 0 {
		snap, err := statusOfEtcd(ctx, st.Endpoints, job, tf)
		if err != nil {
			return nil, "", fmt.Errorf("up (pid %d) runs, but its etcd does not answer: %w", st.PID, err)
		}
		return snap, note, nil
	}
	if !st.Embedded {
		if len(st.Endpoints) == 0 {
			return nil, "", fmt.Errorf("--out %s: %s names no etcd endpoints", dir, upStateFile)
		}
		snap, err := statusOfEtcd(ctx, st.Endpoints, job, tf)
		return snap, "", err
	}
	keys, err := etcdx.NewKeys(job)
	if err != nil {
		return nil, "", badInput("--job: %v", err)
	}
	data := filepath.Join(dir, "etcd")
	src, err := jobview.OpenDisk(data, keys.Prefix())
	if errors.Is(err, jobview.ErrEtcdRunning) {
		return nil, "", fmt.Errorf("--out %s: an etcd still holds %s but up (pid %d) is not running; ask it with --etcd", dir, data, st.PID)
	}
	if err != nil {
		return nil, "", err
	}
	snap, err := jobview.Read(ctx, src, keys, jobview.Options{})
	if err != nil {
		return nil, "", err
	}
	why := "up is not running"
	if st.PID > 0 {
		why = "up (pid " + strconv.Itoa(st.PID) + ") is not running"
	}
	snap.Offline = why + "; read from " + data
	return snap, "", nil
}

// writeStatus prints the snapshot as a human table.
func writeStatus(w io.Writer, s *jobview.Snapshot, note string) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	state := "running"
	switch {
	case s.Offline != "":
		state = "NOT RUNNING: " + s.Offline
	case s.Leader == nil:
		state = "no leader"
	}
	fmt.Fprintf(tw, "job\t%s (%s, etcd revision %d)\n", s.Job, state, s.Revision)
	if s.Leader == nil && s.Plan == nil && s.Committed == nil && len(s.Members) == 0 && len(s.Recoveries) == 0 {
		fmt.Fprintf(tw, "\tetcd holds nothing under %s%s/: is the job id right?\n", etcdx.Root, s.Job)
	}
	if note != "" {
		fmt.Fprintf(tw, "\t%s\n", note)
	}
	if l := s.Leader; l != nil {
		fmt.Fprintf(tw, "leader\t%s, fencing token %d, lease %s%s\n", l.Name, l.FencingToken, l.Lease, ttlText(l.TTLS, l.GrantedS))
	} else {
		fmt.Fprintf(tw, "leader\tnone\n")
	}
	if p := s.Plan; p != nil {
		vac := ""
		if len(p.Vacant) > 0 {
			vac = fmt.Sprintf(", vacant stages %v", p.Vacant)
		}
		fmt.Fprintf(tw, "plan\tepoch %d: %s, %d workers, %d stages%s (token %d)\n", p.Epoch, p.Schedule, len(p.Workers), p.Stages, vac, p.LeaderRev)
	} else {
		fmt.Fprintf(tw, "plan\tnone yet\n")
	}
	if c := s.Committed; c != nil {
		fmt.Fprintf(tw, "committed\tstep %d, loss %.4f (epoch %d, token %d)\n", c.Step, c.Loss, c.Epoch, c.LeaderRev)
	} else {
		fmt.Fprintf(tw, "committed\tno step yet\n")
	}
	if c := s.Checkpoint; c != nil {
		fmt.Fprintf(tw, "checkpoint\tstep %d: %d files in %s\n", c.Step, c.Files, c.Dir)
	} else {
		fmt.Fprintf(tw, "checkpoint\tnone\n")
	}
	fmt.Fprintln(tw)
	fmt.Fprintf(tw, "WORKER\tSTAGES\tREPLICA\tADDRESS\tLEASE\tTTL LEFT\n")
	for _, m := range s.Members {
		stages := "standby"
		if m.InPlan {
			stages = joinInts(m.Stages)
		}
		ttl := "-"
		if m.TTLS >= 0 {
			ttl = fmt.Sprintf("%d of %d s", m.TTLS, m.GrantedS)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", m.Name, stages, m.Replica, m.Addr, m.Lease, ttl)
	}
	if p := s.Plan; p != nil {
		for _, pw := range p.Workers {
			if !pw.Registered {
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t(registration gone)\t-\n", pw.Name, joinInts(pw.Stages), pw.Replica, pw.Addr)
			}
		}
	}
	if len(s.Members) == 0 {
		fmt.Fprintf(tw, "(no worker registered)\n")
	}
	fmt.Fprintln(tw)
	fmt.Fprintf(tw, "RECOVERY\tSTEP\tDETECTED\tEPOCH\tTOOK\tDETAIL\n")
	for _, r := range s.Recoveries {
		var d []string
		if len(r.Lost) > 0 {
			d = append(d, "lost "+strings.Join(r.Lost, ","))
		}
		if len(r.Joined) > 0 {
			d = append(d, "joined "+strings.Join(r.Joined, ","))
		}
		if len(r.Vacant) > 0 {
			d = append(d, "vacant stages "+joinInts(r.Vacant))
		}
		if r.Kind == "restore" || r.Kind == "takeover" {
			d = append(d, fmt.Sprintf("from step %d, replayed %d", r.FromCheckpoint, r.Replayed))
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%.3f s\t%s\n", r.Kind, r.Step, r.DetectedAt.UTC().Format(time.RFC3339), r.Epoch, r.RecoveryS, strings.Join(d, "; "))
	}
	if len(s.Recoveries) == 0 {
		fmt.Fprintf(tw, "(none recorded)\n")
	}
	return tw.Flush()
}

func ttlText(ttl, granted int64) string {
	if ttl < 0 {
		return ""
	}
	return fmt.Sprintf(" (%d of %d s left)", ttl, granted)
}

func joinInts(xs []int) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = strconv.Itoa(x)
	}
	return strings.Join(s, ",")
}
