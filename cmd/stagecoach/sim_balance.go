package main

// `stagecoach sim --balance`: each plan's layers re-placed over its stages
// for the cluster's node speeds and the head's cost (sim.Balance), kept
// when the simulation says the iteration got faster.

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/pflag"

	"stagecoach/sim"
)

var simBalance bool

var _ = func() bool {
	registerSimExtension(&simExtension{AddFlags: func(fs *pflag.FlagSet) {
		fs.BoolVar(&simBalance, "balance", false, "place each plan's layers over its stages for the node speeds and the head's cost, keeping the split when it simulates faster")
	}})
	return true
}()

// balanceJobs applies --balance to every job with a plan.
func balanceJobs(env *simEnv, jobs []*simJob) error {
	if !simBalance {
		return nil
	}
	for _, j := range jobs {
		if j.Plan == nil || j.Infeasible != "" {
			continue
		}
		b, err := sim.Balance(j.Plan, j.Cluster, env.Options)
		if err != nil {
			return badInput("--balance: schedule %s: %v", j.Name, err)
		}
		layers := make([]string, len(b.Plan.Stages))
		for i, s := range b.Plan.Stages {
			layers[i] = strconv.Itoa(s.Layers)
		}
		verdict := "balanced split kept"
		if !b.Kept {
			verdict = "no faster: the original split kept"
		}
		fmt.Fprintf(env.Stderr, "balance: %s: layers per stage %s: %.4g s -> %.4g s per iteration (%s)\n",
			j.Name, strings.Join(layers, ","), b.Before, b.After, verdict)
		// A calibration's per-stage times describe the old split: both
		// plans were priced by the layer.
		j.Plan, j.Cluster = b.Plan, b.Cluster
	}
	return nil
}
