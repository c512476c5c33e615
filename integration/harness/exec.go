//go:build linux

package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"time"
)

// cmdTimeout bounds every external command the harness runs, so a wedged
// tool cannot hang a test run.
const cmdTimeout = 30 * time.Second

// CmdResult is what a finished command left behind.
type CmdResult struct {
	Args   []string
	Stdout string
	Stderr string
	Code   int // exit code; -1 if killed by a signal
}

// String is a one-line summary for test failure messages.
func (r CmdResult) String() string {
	return fmt.Sprintf("%s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(r.Args, " "), r.Code, r.Stdout, r.Stderr)
}

// Run runs a command with stdin (may be empty) and returns its output and
// exit code. The error is non-nil only when the command could not be started
// or was killed because ctx ended or cmdTimeout passed; a non-zero exit is
// reported in Code, not as an error.
func Run(ctx context.Context, stdin string, name string, args ...string) (CmdResult, error) {
	ctx, cancel := context.WithTimeout(ctx, cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	err := cmd.Run()
	res := CmdResult{Args: append([]string{name}, args...), Stdout: out.String(), Stderr: errb.String()}
	var exitErr *exec.ExitError
	switch {
	case err == nil:
	case ctx.Err() != nil:
		res.Code = -1
		return res, fmt.Errorf("%s: %w", name, ctx.Err())
	case errors.As(err, &exitErr):
		res.Code = exitErr.ExitCode()
	default:
		res.Code = -1
		return res, fmt.Errorf("run %s: %w", name, err)
	}
	return res, nil
}

// must runs a command and turns a non-zero exit into an error; it is for
// setup steps that have to succeed.
func must(ctx context.Context, stdin string, name string, args ...string) (string, error) {
	res, err := Run(ctx, stdin, name, args...)
	if err != nil {
		return "", err
	}
	if res.Code != 0 {
		return "", fmt.Errorf("%s: exit %d: %s", strings.Join(res.Args, " "), res.Code, strings.TrimSpace(res.Stderr))
	}
	return res.Stdout, nil
}
