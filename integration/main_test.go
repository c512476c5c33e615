//go:build linux

package integration

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"nftdns/integration/harness"
)

// nftdnsBin is the binary under test, built once by TestMain; buildErr says
// why there is none. Set NFTDNS_BIN to test a prebuilt binary instead.
var (
	nftdnsBin string
	buildErr  error
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Geteuid() == 0 {
		// Namespaces of earlier runs that were killed before cleanup.
		if err := harness.RemoveStale(context.Background()); err != nil {
			fmt.Fprintln(os.Stderr, "removing stale namespaces:", err)
		}
		if bin := os.Getenv("NFTDNS_BIN"); bin != "" {
			nftdnsBin = bin
		} else {
			dir, err := os.MkdirTemp("", "nftdns-itest-")
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			defer os.RemoveAll(dir)
			nftdnsBin, buildErr = build(dir)
		}
	}
	return m.Run()
}

// build compiles ./cmd/nftdns from the module root (the parent of this
// package's directory) into dir.
func build(dir string) (string, error) {
	bin := filepath.Join(dir, "nftdns")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/nftdns")
	cmd.Dir = ".."
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/nftdns: %w\n%s", err, out)
	}
	return bin, nil
}

// requireRoot skips the test when not root: namespaces and nftables need
// CAP_NET_ADMIN and CAP_SYS_ADMIN. Nothing else is a reason to skip.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("integration tests need root (network namespaces and nftables); run with sudo")
	}
}

// testCtx bounds a whole test so nothing can hang past it.
func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// newTopo builds a topology that is torn down when the test ends, pass or
// fail.
func newTopo(t *testing.T, ctx context.Context) *harness.Topology {
	t.Helper()
	requireRoot(t)
	topo, err := harness.New(ctx)
	if err != nil {
		t.Fatalf("build topology: %v", err)
	}
	t.Cleanup(func() {
		if err := topo.Close(); err != nil {
			t.Errorf("topology cleanup: %v", err)
		}
	})
	return topo
}

// cliFor returns a CLI runner for the box with a per-test state directory;
// it fails the test if the binary could not be built.
func cliFor(t *testing.T, topo *harness.Topology) *harness.CLI {
	t.Helper()
	if buildErr != nil {
		t.Fatalf("nftdns binary not available: %v", buildErr)
	}
	return topo.CLI(nftdnsBin, t.TempDir())
}

// writeList writes a blocklist file and returns its path.
func writeList(t *testing.T, name string, lines ...string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// mustRun runs an nftdns subcommand and fails the test unless it exits 0.
func mustRun(t *testing.T, ctx context.Context, cli *harness.CLI, sub string, args ...string) harness.CmdResult {
	t.Helper()
	res, err := cli.Run(ctx, sub, args...)
	if err != nil {
		t.Fatalf("nftdns %s: %v", sub, err)
	}
	if res.Code != 0 {
		t.Fatalf("nftdns %s failed:\n%s", sub, res)
	}
	return res
}

// apply runs nftdns apply with the topology's addresses and the lists.
func apply(t *testing.T, ctx context.Context, topo *harness.Topology, cli *harness.CLI, lists ...string) {
	t.Helper()
	mustRun(t, ctx, cli, "apply", topo.ApplyArgs(lists...)...)
}

// Names used across the tests.
var (
	blockedName = "blocked.example"
	allowedName = "allowed.example"
	// Names longer than the 64-byte set key limit (DESIGN §3).
	longBlocked100 = harness.LongName(100, "long-blocked.example", 'b')
	longBlocked250 = harness.LongName(250, "long-blocked.example", 'c')
	longAllowed100 = harness.LongName(100, "long-allowed.example", 'b')
	// Shares its first 240 wire bytes with longBlocked250 and differs
	// only near the end: a check of the first 64 bytes alone would
	// block it.
	longAllowed250 = strings.Replace(longBlocked250, "long-blocked", "long-blockex", 1)
)

// standardList is the blocklist most tests apply: plain names, hosts-file
// lines, comments and a mixed-case entry. Names over 64 wire bytes are in
// longList, used by TestLongNames only, so a problem with long names shows
// up there and does not mask every other behaviour.
func standardList(t *testing.T) string {
	return writeList(t, "standard.list",
		"# nftdns integration test list",
		blockedName,
		"0.0.0.0 hosts-style.example",
		"127.0.0.1\ttab-hosts.example # trailing comment",
		"",
		"MiXeD.Listed.Example",
	)
}

// longList holds names longer than a 64-byte set key.
func longList(t *testing.T) string {
	return writeList(t, "long.list", "# names over 64 wire bytes", longBlocked100, longBlocked250)
}

// query is a shorthand for an exchange from the client namespace.
func query(ctx context.Context, topo *harness.Topology, q harness.Query) harness.Outcome {
	return harness.Exchange(ctx, topo.Client, q)
}

// listen is the box's listen address of a family.
func listen(f harness.Family) netip.Addr { return harness.Listen(f) }

// boxUp is the address the upstreams must see as the source of masqueraded
// queries.
func boxUp(f harness.Family) netip.Addr {
	if f == harness.V6 {
		return harness.BoxUp6
	}
	return harness.BoxUp4
}

// expectAnswered checks that o got a NOERROR answer from an upstream of the
// right family and transport, and that the upstream saw the box's address
// as the source (masquerade).
func expectAnswered(t *testing.T, topo *harness.Topology, o harness.Outcome, f harness.Family) {
	t.Helper()
	if !o.Answered() {
		t.Errorf("want an answer, got %s", o)
		return
	}
	if o.Msg.Rcode != 0 || o.Upstream < 1 || o.Upstream > harness.NumUpstreams {
		t.Errorf("want NOERROR from upstream-1..%d, got %s", harness.NumUpstreams, o)
		return
	}
	name := strings.ToLower(strings.TrimSuffix(o.Sent, "."))
	n := topo.Log.Count(func(r harness.Received) bool {
		return r.Name == name && r.Upstream == o.Upstream && r.Family == f &&
			r.Proto == o.Query.Proto && r.Src.Addr() == boxUp(f)
	})
	if n == 0 {
		t.Errorf("%s: upstream-%d has no %s/%s query for %q from %s (masquerade); it logged: %v",
			o, o.Upstream, f, o.Query.Proto, name, boxUp(f), topo.Log.All())
	}
}

// expectBlocked checks that o got no answer and its name never reached an
// upstream.
func expectBlocked(t *testing.T, topo *harness.Topology, o harness.Outcome) {
	t.Helper()
	if o.Answered() {
		t.Errorf("want no answer (blocked), got %s", o)
	}
	if o.Err != nil && !o.TimedOut() && !o.Refused() {
		t.Errorf("blocked query failed oddly: %s", o)
	}
	if n := topo.Log.CountName(o.Sent); n != 0 {
		t.Errorf("%s: blocked name reached the upstreams %d time(s)", o, n)
	}
}

// combos is every family x transport, for table-driven subtests.
type combo struct {
	f harness.Family
	p harness.Proto
}

func (c combo) String() string { return fmt.Sprintf("%s-%s", c.f, c.p) }

func combos() []combo {
	var out []combo
	for _, f := range harness.Families {
		for _, p := range harness.Protos {
			out = append(out, combo{f, p})
		}
	}
	return out
}
