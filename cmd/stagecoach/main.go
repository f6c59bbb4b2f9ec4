// Command stagecoach is the single Stagecoach binary: every subcommand
// (sim, plan, train, up, coordinator, worker, etcd, ...) lives in its own file
// in this directory and registers itself with the root command in init.
// Files here only read flags and config and call library packages.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

var rootCmd = &cobra.Command{
	Use:           "stagecoach",
	Short:         "Pipeline-parallel training coordinator and schedule simulator",
	SilenceUsage:  true,
	SilenceErrors: true,
}

// usageError marks bad input from the user: it exits with status 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// badInput wraps err so that main exits with status 2.
func badInput(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

func main() {
	rootCmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	if err := rootCmd.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "stagecoach:", err)
		var ue usageError
		if errors.As(err, &ue) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}
