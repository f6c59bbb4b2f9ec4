// Command stagecoach is the single Stagecoach binary: every subcommand
// (sim, plan, train, up, coordinator, worker, etcd, ...) lives in its own file
// in this directory and registers itself with the root command in init.
// Files here only read flags and config and call library packages.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"stagecoach/internal/parallel"
	"stagecoach/internal/sgemm"
)

var rootCmd = &cobra.Command{
	Use:           "stagecoach",
	Short:         "Pipeline-parallel training coordinator and schedule simulator",
	SilenceUsage:  true,
	SilenceErrors: true,
	// Every subcommand logs through slog as --log-format and
	// --log-level say; no subcommand sets a PersistentPreRunE of its own.
	// An unknown STAGECOACH_GEMM or STAGECOACH_WAIT is refused here,
	// before any work.
	PersistentPreRunE: func(*cobra.Command, []string) error {
		if err := sgemm.CheckEnv(); err != nil {
			return badInput("%v", err)
		}
		if err := parallel.CheckEnv(); err != nil {
			return badInput("%v", err)
		}
		return setupLogging()
	},
}

// The root command's logging flags, shared by every subcommand.
var logFormat, logLevel string

func init() {
	f := rootCmd.PersistentFlags()
	f.StringVar(&logFormat, "log-format", "text", "log line format on stderr: text (key=value) or json (one object per line)")
	f.StringVar(&logLevel, "log-level", "info", "least severe log level shown: debug, info, warn or error")
}

// setupLogging checks --log-format and --log-level and makes slog's
// default logger (and the standard log package) write to stderr in that
// form.
func setupLogging() error {
	var level slog.Level
	switch logLevel {
	case "debug":
		level = slog.LevelDebug
	case "info":
		level = slog.LevelInfo
	case "warn":
		level = slog.LevelWarn
	case "error":
		level = slog.LevelError
	default:
		return badInput("--log-level must be debug, info, warn or error, got %q", logLevel)
	}
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler
	switch logFormat {
	case "text":
		h = slog.NewTextHandler(os.Stderr, opts)
	case "json":
		h = slog.NewJSONHandler(os.Stderr, opts)
	default:
		return badInput("--log-format must be text or json, got %q", logFormat)
	}
	slog.SetDefault(slog.New(h))
	return nil
}

// logFlagArgs passes this process's logging flags on to a child process.
func logFlagArgs() []string {
	return []string{"--log-format", logFormat, "--log-level", logLevel}
}

// logfTo adapts a library's printf-style Logf hook to l: each line is
// logged at level with l's attributes, plus those attrs returns when it is
// logged (the plan epoch, known only then). A leading trim (a
// "worker <name>: " prefix the attributes already say) is cut.
func logfTo(l *slog.Logger, level slog.Level, trim string, attrs func() []any) func(string, ...any) {
	return func(format string, args ...any) {
		ctx := context.Background()
		if !l.Enabled(ctx, level) {
			return
		}
		msg := fmt.Sprintf(format, args...)
		if trim != "" {
			msg = strings.TrimPrefix(msg, trim)
		}
		var a []any
		if attrs != nil {
			a = attrs()
		}
		l.Log(ctx, level, msg, a...)
	}
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
		var ue usageError
		if errors.As(err, &ue) {
			fmt.Fprintln(os.Stderr, "stagecoach:", err)
			os.Exit(2)
		}
		if logFormat == "json" {
			// Every line on stderr stays one JSON object.
			slog.Error("stagecoach: "+err.Error(), "exit", 1)
		} else {
			fmt.Fprintln(os.Stderr, "stagecoach:", err)
		}
		os.Exit(1)
	}
}
