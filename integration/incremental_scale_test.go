//go:build linux

package integration

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"nftdns/integration/harness"
)

// scaleNames makes n distinct names of 2-5 labels and 6-120 wire bytes
// (so some need staged lookups), deterministic from seed.
func scaleNames(n int, seed uint64) []string {
	r := rand.New(rand.NewPCG(seed, 1))
	seen := make(map[string]bool, n)
	out := make([]string, 0, n)
	for len(out) < n {
		labels := 2 + r.IntN(4)
		parts := make([]string, labels)
		for i := range parts {
			l := 1 + r.IntN(12)
			if r.IntN(20) == 0 {
				l = 20 + r.IntN(40) // a few long labels
			}
			b := make([]byte, l)
			for j := range b {
				b[j] = byte('a' + r.IntN(26))
			}
			parts[i] = string(b)
		}
		name := strings.Join(parts, ".")
		if harness.WireLen(name) > 120 || seen[name] {
			continue
		}
		seen[name] = true
		out = append(out, name)
	}
	return out
}

var daemonDurations = regexp.MustCompile(`apply_duration=([0-9.]+(?:ms|s|µs)) duration=([0-9.]+(?:ms|s|µs))`)

var applyDuration = regexp.MustCompile(`elements, ([0-9.]+(?:ms|s|µs)), ruleset generation`)

// TestIncrementalScale measures `nftdns apply` of a 1% change to a list of
// NFTDNS_SCALE_NAMES names (unset: skipped), full (--full) versus
// incremental, three of each in the same run, and the resident memory of
// `nftdns run` idle with the list applied. A measurement: it fails only if
// a command fails or an apply is not of the kind asked.
//
//	NFTDNS_SCALE_NAMES=1000000 go test -run TestIncrementalScale -v -timeout 30m ./integration/
func TestIncrementalScale(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("NFTDNS_SCALE_NAMES"))
	if n <= 0 {
		t.Skip("set NFTDNS_SCALE_NAMES (e.g. 1000000) to run")
	}
	ctx := testCtx(t, 30*time.Minute)
	topo := newTopo(t, ctx)
	cli := cliFor(t, topo)
	change := max(n/100, 1)
	pool := scaleNames(n+12*change, 7)
	list := filepath.Join(t.TempDir(), "scale.list")
	round := 0
	write := func() {
		t.Helper()
		names := pool[round*change : round*change+n]
		if err := os.WriteFile(list, []byte(strings.Join(names, "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		round++
	}
	timed := func(extra ...string) (wall, kernel time.Duration, out string) {
		t.Helper()
		// Not harness.Run: its 30 s limit is for small lists.
		args := append([]string{"apply", "--netns", topo.Box, "--state-dir", cli.StateDir}, append(topo.ApplyArgs(list), extra...)...)
		start := time.Now()
		stdout, err := exec.CommandContext(ctx, cli.Bin, args...).Output()
		wall = time.Since(start)
		if err != nil {
			t.Fatalf("apply: %v %s", err, stdout)
		}
		m := applyDuration.FindStringSubmatch(string(stdout))
		if m == nil {
			t.Fatalf("no duration in %q", stdout)
		}
		kernel, _ = time.ParseDuration(m[1])
		return wall, kernel, string(stdout)
	}
	write()
	wall, kernel, _ := timed()
	t.Logf("first apply of %d names: %v (kernel %v)", n, wall, kernel)

	var fullW, fullK, incW, incK []time.Duration
	for range 3 {
		write()
		w, k, out := timed("--full")
		if !strings.Contains(out, "full") || strings.Contains(out, "incremental") {
			t.Fatalf("--full apply: %s", out)
		}
		fullW, fullK = append(fullW, w), append(fullK, k)
		write()
		w, k, out = timed()
		if !strings.Contains(out, "incremental: +") {
			t.Fatalf("apply was not incremental: %s", out)
		}
		incW, incK = append(incW, w), append(incK, k)
		t.Logf("full %v (kernel %v); %s", fullW[len(fullW)-1], fullK[len(fullK)-1], strings.TrimSpace(out))
	}
	med := func(d []time.Duration) time.Duration { slices.Sort(d); return d[len(d)/2] }
	t.Logf("%d names, %d replaced: command wall time median full %v, incremental %v (%.3f); kernel transaction median full %v, incremental %v (%.3f)",
		n, change, med(fullW), med(incW), float64(med(incW))/float64(med(fullW)),
		med(fullK), med(incK), float64(med(incK))/float64(med(fullK)))

	// The daemon, idle with the list applied.
	d := startDaemon(t, topo, cli.StateDir, writeConfig(t, topo, list), "--health-interval", "5s")
	waitFor(t, ctx, 10*time.Minute, "the daemon's first apply", func() bool {
		return strings.Contains(d.logs.String(), "msg=apply")
	})
	// Refreshes of a 1% change on SIGHUP: the daemon keeps the applied
	// ruleset in memory, so it compiles only the new lists.
	var refW, refK []time.Duration
	for i := range 3 {
		write()
		if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		var line string
		waitFor(t, ctx, 10*time.Minute, "the daemon's refresh", func() bool {
			for _, l := range strings.Split(d.logs.String(), "\n") {
				if strings.Contains(l, "msg=apply trigger=sighup") && strings.Count(d.logs.String(), "trigger=sighup") == i+1 {
					line = l
				}
			}
			return line != ""
		})
		m := daemonDurations.FindStringSubmatch(line)
		if m == nil || !strings.Contains(line, "kind=incremental") {
			t.Fatalf("refresh: %s", line)
		}
		k, _ := time.ParseDuration(m[1])
		w, _ := time.ParseDuration(m[2])
		refK, refW = append(refK, k), append(refW, w)
		t.Logf("daemon refresh: %s", line)
	}
	t.Logf("daemon refresh of a 1%% change: median %v (kernel %v), vs apply --full %v (kernel %v)",
		med(refW), med(refK), med(fullW), med(fullK))
	time.Sleep(15 * time.Second) // idle: a few health checks, GC settled
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", d.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if strings.HasPrefix(line, "VmRSS") || strings.HasPrefix(line, "VmHWM") {
			t.Logf("daemon idle with %d names: %s", n, strings.Join(strings.Fields(line), " "))
		}
	}
	d.stop(t)
}
