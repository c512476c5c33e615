//go:build linux

// Command demo shows nftdns at work on real packets: it builds a throwaway
// set of network namespaces (clients, a box, three upstream resolvers),
// applies a bundled sample blocklist with the nftdns CLI, sends example
// queries and prints what happened to each, then prints `nftdns status`
// and removes everything again. It needs root.
//
//	go run ./integration/demo -bin bin/nftdns
package main

import (
	"context"
	_ "embed"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/miekg/dns"

	"nftdns/integration/harness"
)

//go:embed sample-blocklist.txt
var sampleList []byte

func main() {
	bin := flag.String("bin", "bin/nftdns", "path to the nftdns binary")
	flag.Parse()
	if err := run(*bin); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

// example is one query the demo sends and what it expects.
type example struct {
	name    string
	qtype   uint16
	proto   harness.Proto
	family  harness.Family
	blocked bool
}

var examples = []example{
	{"www.example.org", dns.TypeA, harness.UDP, harness.V4, false},
	{"www.example.org", dns.TypeA, harness.UDP, harness.V4, false},
	{"www.example.org", dns.TypeA, harness.UDP, harness.V4, false},
	{"www.example.org", dns.TypeAAAA, harness.TCP, harness.V6, false},
	{"malware-c2.example", dns.TypeA, harness.UDP, harness.V4, true},
	{"MALWARE-C2.Example", dns.TypeA, harness.TCP, harness.V4, true},
	{"tracker.adnetwork.example", dns.TypeAAAA, harness.UDP, harness.V6, true},
	{"stealer-upload.example", dns.TypeA, harness.TCP, harness.V6, true},
	{"sub.malware-c2.example", dns.TypeA, harness.UDP, harness.V4, false},
	{"malware-c2.example.org", dns.TypeA, harness.UDP, harness.V6, false},
}

func run(bin string) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces and nftables)")
	}
	if _, err := os.Stat(bin); err != nil {
		return fmt.Errorf("nftdns binary: %w (build it with `go build -o bin/nftdns ./cmd/nftdns`)", err)
	}
	// Ctrl-C or SIGTERM cancels ctx; the deferred cleanups still run.
	// Signals stay caught until run returns, so a second Ctrl-C cannot
	// cut the cleanup short.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()

	dir, err := os.MkdirTemp("", "nftdns-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	list := filepath.Join(dir, "sample-blocklist.txt")
	if err := os.WriteFile(list, sampleList, 0o644); err != nil {
		return err
	}

	fmt.Println("building namespaces ...")
	topo, err := harness.New(ctx)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := topo.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("cleanup: %w", cerr))
		}
	}()
	fmt.Printf("  clients    %-28s %s, %s\n", topo.Client, harness.ClientNet4, harness.ClientNet6)
	fmt.Printf("  box        %-28s listens on %s, %s\n", topo.Box, harness.Listen4, harness.Listen6)
	for _, u := range topo.Upstreams {
		fmt.Printf("  %-10s %-28s %s, %s\n", u.Name(), topo.Upstream, u.V4, u.V6)
	}

	cli := topo.CLI(bin, filepath.Join(dir, "state"))
	args := topo.ApplyArgs(list)
	fmt.Printf("\n$ nftdns apply %s\n", strings.Join(args, " "))
	res, err := cli.Run(ctx, "apply", args...)
	if err != nil {
		return err
	}
	fmt.Print(indent(res.Stdout + res.Stderr))
	if res.Code != 0 {
		return fmt.Errorf("nftdns apply exited %d", res.Code)
	}

	fmt.Println()
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tTYPE\tPROTO\tFAMILY\tOUTCOME")
	unexpected := 0
	for _, ex := range examples {
		to := harness.DefaultTimeout
		if ex.blocked {
			to = time.Second
		}
		o := harness.Exchange(ctx, topo.Client, harness.Query{
			Name: ex.name, Type: ex.qtype, Proto: ex.proto, Server: harness.Listen(ex.family), Timeout: to,
		})
		if ctx.Err() != nil {
			return ctx.Err()
		}
		outcome := describe(topo, o, ex.family)
		if o.Answered() == ex.blocked || (o.Answered() && o.Upstream == 0) {
			unexpected++
			outcome += "   <-- UNEXPECTED"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", ex.name, dns.TypeToString[ex.qtype], ex.proto, ex.family, outcome)
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	fmt.Println("\n$ nftdns status")
	res, err = cli.Run(ctx, "status")
	if err != nil {
		return err
	}
	fmt.Print(indent(res.Stdout + res.Stderr))
	if res.Code != 0 {
		return fmt.Errorf("nftdns status exited %d", res.Code)
	}
	if unexpected > 0 {
		return fmt.Errorf("%d example(s) did not behave as expected", unexpected)
	}
	fmt.Println("\nall examples behaved as expected; cleaning up")
	return nil
}

// describe turns an outcome into "blocked" or "answered by upstream-2
// (198.18.2.12)".
func describe(topo *harness.Topology, o harness.Outcome, f harness.Family) string {
	switch {
	case !o.Answered() && o.TimedOut():
		return "blocked"
	case !o.Answered():
		return fmt.Sprintf("no answer (%v)", o.Err)
	case o.Upstream >= 1 && o.Upstream <= len(topo.Upstreams):
		u := topo.Upstreams[o.Upstream-1]
		return fmt.Sprintf("answered by %s (%s)", u.Name(), u.Addr(f))
	default:
		return fmt.Sprintf("answered (%s) by an unknown server", dns.RcodeToString[o.Msg.Rcode])
	}
}

func indent(s string) string {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return ""
	}
	return "  " + strings.ReplaceAll(s, "\n", "\n  ") + "\n"
}
