package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// An `up` run owns these in its --out: its state file, the embedded
// etcd's data, the summary files and, under the checkpoint root, the step
// directories of its checkpoints, its hand-offs and the cut of its
// initial checkpoint. A new run into the same --out would mix its step
// directories with the old run's, so it is refused unless told to clear
// them (--force); only these are ever removed.
var (
	upOutFiles   = []string{upStateFile, "summary.json", "trace.json", "loss.png"}
	stepDirName  = regexp.MustCompile(`^step-[0-9]{8,}$`)
	epochDirName = regexp.MustCompile(`^epoch-[0-9]+$`)
)

// previousRun lists what an earlier run left in out and the checkpoint
// root ckpts: its state file, etcd data and checkpoint step directories.
func previousRun(out, ckpts string, embedded bool) ([]string, error) {
	var found []string
	if _, err := os.Stat(filepath.Join(out, upStateFile)); err == nil {
		found = append(found, filepath.Join(out, upStateFile))
	}
	if embedded {
		if _, err := os.Stat(filepath.Join(out, "etcd")); err == nil {
			found = append(found, filepath.Join(out, "etcd"))
		}
	}
	steps, err := ourStepDirs(ckpts)
	if err != nil {
		return nil, err
	}
	return append(found, steps...), nil
}

// ourStepDirs lists the step directories under the checkpoint root: its
// step-N, handoff/epoch-N and init/step-N.
func ourStepDirs(ckpts string) ([]string, error) {
	var out []string
	list := func(dir string, pat *regexp.Regexp) error {
		ents, err := os.ReadDir(dir)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		for _, e := range ents {
			if e.IsDir() && pat.MatchString(e.Name()) {
				out = append(out, filepath.Join(dir, e.Name()))
			}
		}
		return nil
	}
	if err := list(ckpts, stepDirName); err != nil {
		return nil, err
	}
	if err := list(filepath.Join(ckpts, "handoff"), epochDirName); err != nil {
		return nil, err
	}
	if err := list(filepath.Join(ckpts, "init"), stepDirName); err != nil {
		return nil, err
	}
	return out, nil
}

// refuseOrClear refuses to run into an out that holds an earlier run,
// or, with force, removes that run's files (upOutFiles, the etcd data
// when embedded, the step directories) and nothing else.
func refuseOrClear(out, ckpts string, embedded, force bool) error {
	found, err := previousRun(out, ckpts, embedded)
	if err != nil || len(found) == 0 {
		return err
	}
	if !force {
		shown := found
		if len(shown) > 3 {
			shown = append(shown[:3:3], fmt.Sprintf("and %d more", len(found)-3))
		}
		return badInput("--out %s already holds a run (%s): its checkpoints would mix with this run's. Continue it with --resume, clear it with --force (removes its step directories, etcd data and summary files, nothing else), or use another --out",
			out, strings.Join(shown, ", "))
	}
	steps, err := ourStepDirs(ckpts)
	if err != nil {
		return err
	}
	for _, d := range steps {
		if err := os.RemoveAll(d); err != nil {
			return err
		}
	}
	// The hand-off and init directories go only once empty.
	for _, d := range []string{filepath.Join(ckpts, "handoff"), filepath.Join(ckpts, "init")} {
		_ = os.Remove(d)
	}
	if embedded {
		if err := os.RemoveAll(filepath.Join(out, "etcd")); err != nil {
			return err
		}
	}
	for _, f := range upOutFiles {
		if err := os.Remove(filepath.Join(out, f)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}
