package main

// `stagecoach sim --schedule auto`: the fastest schedule for the cost
// model at hand (scheduler/auto), reported as one row of the comparison
// with what it picked and the best named schedule on stderr.

import (
	"fmt"
	"time"

	"stagecoach/scheduler/auto"
)

const autoSchedule = "auto"

var _ = func() bool {
	registerSimExtension(&simExtension{Schedules: map[string]func(env *simEnv) (*simJob, error){autoSchedule: buildAutoJob}})
	return true
}()

func buildAutoJob(env *simEnv) (*simJob, error) {
	spec, err := placedSpec(env, autoSchedule)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	res, err := auto.Search(spec, env.Cluster)
	if err != nil {
		if len(env.Schedules) > 1 {
			return &simJob{Name: autoSchedule, Cluster: env.Cluster, Infeasible: err.Error()}, nil
		}
		return nil, badInput("%v", err)
	}
	msg := fmt.Sprintf("auto: %s, %.4g s per iteration, from %d candidates", res.Best.Label(), res.Best.IterationS, len(res.Candidates))
	if res.BestNamed.Plan != nil {
		msg += fmt.Sprintf("; best named schedule %s, %.4g s", res.BestNamed.Name, res.BestNamed.IterationS)
	}
	fmt.Fprintln(env.Stderr, msg)
	return &simJob{Name: autoSchedule, Plan: res.Best.Plan, Cluster: env.Cluster, PlanTimeS: time.Since(start).Seconds()}, nil
}
