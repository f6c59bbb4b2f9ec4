package main

// Compute backend flags: where a worker (or `train`) computes its stages.
// By default the built-in Go model in the process; --backend-cmd starts a
// backend process speaking the compute protocol (e.g. the PyTorch backend,
// or `stagecoach compute-serve`), --backend-addr dials a running one.

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"stagecoach/compute"
	"stagecoach/compute/builtin"
	"stagecoach/compute/remote"
	"stagecoach/model"
)

type backendFlags struct {
	cmd, addr string
	timeout   time.Duration
}

func (b *backendFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&b.cmd, "backend-cmd", "", `compute the stages in this backend process, started per worker (e.g. "python3 -m stagecoach_torch --model examples/torch/gpt.py"; default: the built-in Go model in the worker)`)
	fs.StringVar(&b.addr, "backend-addr", "", "compute the stages in a running backend at unix:///PATH or 127.0.0.1:PORT")
	fs.DurationVar(&b.timeout, "backend-timeout", 5*time.Minute, "a backend operation that takes longer fails the iteration as a hung backend")
}

// args is the flags as command-line arguments (for `up` to pass on).
func (b *backendFlags) args() []string {
	var out []string
	if b.cmd != "" {
		out = append(out, "--backend-cmd", b.cmd)
	}
	if b.addr != "" {
		out = append(out, "--backend-addr", b.addr)
	}
	if b.timeout != 5*time.Minute {
		out = append(out, "--backend-timeout", b.timeout.String())
	}
	return out
}

func (b *backendFlags) check() error {
	if b.cmd != "" && b.addr != "" {
		return badInput("--backend-cmd and --backend-addr: give one")
	}
	if b.timeout <= 0 {
		return badInput("--backend-timeout must be positive")
	}
	if b.cmd != "" {
		if _, err := splitCommand(b.cmd); err != nil {
			return badInput("--backend-cmd: %v", err)
		}
	}
	return nil
}

// open returns the backend the flags name (the built-in one with limits
// when none): stderr receives a started backend's output, and observe
// (when not nil) hears of each operation of a backend process.
func (b *backendFlags) open(ctx context.Context, lim model.Limits, stderr io.Writer, observe func(op string, call, compute time.Duration)) (compute.Backend, error) {
	if err := b.check(); err != nil {
		return nil, err
	}
	opts := remote.Options{CallTimeout: b.timeout, Observe: observe}
	switch {
	case b.cmd != "":
		args, _ := splitCommand(b.cmd)
		be, err := remote.Start(ctx, remote.Command{Args: args, Stdout: stderr, Stderr: stderr}, opts)
		if err != nil {
			return nil, err
		}
		return be, nil
	case b.addr != "":
		be, err := remote.Dial(ctx, b.addr, opts)
		if err != nil {
			return nil, err
		}
		return be, nil
	}
	return builtin.Backend{Limits: lim}, nil
}

// splitCommand splits a command line into words as a POSIX shell would
// for the simple cases: blanks separate words, single quotes keep
// everything, double quotes keep everything but \" and \\, a backslash
// outside quotes escapes the next character. No variables, globs or
// pipes: the command is run directly, without a shell.
func splitCommand(s string) ([]string, error) {
	var words []string
	var cur strings.Builder
	inWord := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		case c == '\'':
			j := strings.IndexByte(s[i+1:], '\'')
			if j < 0 {
				return nil, fmt.Errorf("unterminated single quote at byte %d", i)
			}
			cur.WriteString(s[i+1 : i+1+j])
			i += j + 1
			inWord = true
		case c == '"':
			i++
			for ; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' && i+1 < len(s) && (s[i+1] == '"' || s[i+1] == '\\') {
					i++
				}
				cur.WriteByte(s[i])
			}
			if i >= len(s) {
				return nil, fmt.Errorf("unterminated double quote")
			}
			inWord = true
		case c == '\\':
			if i+1 >= len(s) {
				return nil, fmt.Errorf("a backslash ends the command")
			}
			i++
			cur.WriteByte(s[i])
			inWord = true
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	if len(words) == 0 {
		return nil, fmt.Errorf("empty command")
	}
	return words, nil
}
