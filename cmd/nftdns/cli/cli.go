// Package cli implements the nftdns command: it turns flags, a config file
// and blocklists into a rules.Ruleset, programs it with the nft package, and
// records what it applied in a state directory for status, dry runs and
// rollbacks.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	ucli "github.com/urfave/cli/v2"

	"nftdns/rules"
)

// Exit codes.
const (
	exitOK      = 0
	exitRuntime = 1 // the system failed: netlink, file system, concurrency
	exitInput   = 2 // bad usage or bad input: flags, config, addresses, list lines
)

// env is what a run depends on, so tests can swap the kernel and the clock.
type env struct {
	stdout, stderr io.Writer
	open           func(netns string) (kernel, error)
	now            func() time.Time
	listen         func(netns string, group uint16) (logSource, error) // nflog for watch; nil: the real one
}

// Main runs nftdns with args (args[0] is the program name) and returns the
// process exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return run(ctx, args, &env{stdout: stdout, stderr: stderr, open: openNFT, now: time.Now})
}

func run(ctx context.Context, args []string, e *env) int {
	err := newApp(e).RunContext(ctx, args)
	if err == nil {
		return exitOK
	}
	code, msg := classify(err)
	fmt.Fprintf(e.stderr, "nftdns: %s\n", oneLine(msg))
	return code
}

// exitError carries an exit code and, for usage errors, the help hint.
type exitError struct {
	code int
	err  error
	cmd  string // for usage errors: the command whose help to point to
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// usageErrorf is a malformed command line: exit 2 with a help hint.
func usageErrorf(cmd, format string, a ...any) error {
	return &exitError{code: exitInput, err: fmt.Errorf(format, a...), cmd: cmd}
}

// inputErrorf is bad input (a value, the config file): exit 2.
func inputErrorf(format string, a ...any) error {
	return &exitError{code: exitInput, err: fmt.Errorf(format, a...)}
}

// classify maps an error to its exit code and the message to print.
func classify(err error) (int, string) {
	var ee *exitError
	if errors.As(err, &ee) {
		msg := err.Error()
		if ee.cmd != "" {
			msg += fmt.Sprintf(" (see '%s --help')", ee.cmd)
		}
		return ee.code, msg
	}
	if rules.IsInputError(err) {
		return exitInput, err.Error()
	}
	if errors.Is(err, errConcurrentChange) {
		// Another program changed nf_tables between nftdns reading the
		// ruleset generation and committing: the kernel refused the batch.
		return exitRuntime, err.Error() + "; another program changed nftables meanwhile, nothing was applied: retry"
	}
	if errors.Is(err, os.ErrPermission) || errors.Is(err, syscall.EPERM) {
		return exitRuntime, err.Error() + " (nftdns needs root, or CAP_NET_ADMIN in the target namespace)"
	}
	// urfave's own errors ("No help topic for ...") are usage errors.
	var ec ucli.ExitCoder
	if errors.As(err, &ec) && ec.ExitCode() > 1 {
		return exitInput, err.Error()
	}
	return exitRuntime, err.Error()
}

// oneLine folds a multi-line message (YAML and netlink errors can be) into
// the one line the CLI promises.
func oneLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	for i := range lines {
		lines[i] = strings.TrimSpace(lines[i])
	}
	return strings.Join(lines, "; ")
}

func newApp(e *env) *ucli.App {
	app := &ucli.App{
		Name:  "nftdns",
		Usage: "filter DNS queries in the kernel with nftables",
		Description: "nftdns compiles blocklists into an nftables table that drops queries for listed\n" +
			"names before they reach a resolver, and forwards the rest round-robin to upstream\n" +
			"resolvers. Exit status: 0 success, 1 runtime failure, 2 bad usage or input.",
		HideVersion: true,
		// Flags repeat (--upstream a --upstream b); splitting values on
		// commas would also split list paths that contain one.
		DisableSliceFlagSeparator: true,
		Writer:                    e.stdout,
		ErrWriter:                 e.stderr,
		// Exit codes are decided by run, not by urfave calling os.Exit.
		ExitErrHandler: func(*ucli.Context, error) {},
		OnUsageError:   onUsageError("nftdns"),
		Action: func(c *ucli.Context) error {
			if c.Args().Present() {
				return usageErrorf("nftdns", "unknown command %q", c.Args().First())
			}
			return usageErrorf("nftdns", "no command given")
		},
		Commands: []*ucli.Command{
			applyCommand(e),
			flushCommand(e),
			rollbackCommand(e),
			statusCommand(e),
			renderCommand(e),
			checkCommand(e),
			watchCommand(e),
			runCommand(e),
		},
	}
	for _, c := range app.Commands {
		c.OnUsageError = onUsageError("nftdns " + c.Name)
	}
	return app
}

// onUsageError replaces urfave's "Incorrect Usage" plus help dump with one
// line and a hint.
func onUsageError(cmd string) ucli.OnUsageErrorFunc {
	return func(_ *ucli.Context, err error, _ bool) error {
		return usageErrorf(cmd, "%s", flagError(err.Error()))
	}
}

// flagError rewords the flag package's messages, which spell flags with one
// dash, in the --flag spelling of the help text.
func flagError(msg string) string {
	if f, ok := strings.CutPrefix(msg, "flag provided but not defined: -"); ok {
		return "unknown flag --" + f
	}
	if f, ok := strings.CutPrefix(msg, "flag needs an argument: -"); ok {
		return "flag --" + f + " needs a value"
	}
	if i := strings.Index(msg, " for flag -"); strings.HasPrefix(msg, "invalid ") && i > 0 {
		rest := msg[i+len(" for flag -"):]
		name, _, _ := strings.Cut(rest, ":")
		return msg[:i] + " for --" + name
	}
	return msg
}

// noArgs refuses positional arguments for commands that take none: a stray
// word usually means a forgotten flag name.
func noArgs(c *ucli.Context) error {
	if c.Args().Present() {
		return usageErrorf("nftdns "+c.Command.Name, "unexpected argument %q", c.Args().First())
	}
	return nil
}
