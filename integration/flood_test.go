//go:build linux

package integration

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"nftdns/integration/harness"
)

// floodLong reports whether the long floods were asked for
// (NFTDNS_FLOOD=long); the default is a short run that fits the usual test
// time.
func floodLong() bool { return os.Getenv("NFTDNS_FLOOD") == "long" }

// floodSize is one flood's bounds: at most count packets, over at most d.
type floodSize struct {
	count int
	d     time.Duration
}

func (s floodSize) String() string { return fmt.Sprintf("%d packets in %s", s.count, s.d) }

// floodStatus reads the kernel counters through `nftdns status --json`.
func floodStatus(t *testing.T, ctx context.Context, cli *harness.CLI) map[string]uint64 {
	t.Helper()
	res := mustRun(t, ctx, cli, "status", "--json")
	st, err := harness.ParseStatus(res.Stdout)
	if err != nil {
		t.Fatal(err)
	}
	return st.Counters
}

// floodDelta sums the increase of the named counters between two reads.
func floodDelta(before, after map[string]uint64, names ...string) uint64 {
	var d uint64
	for _, n := range names {
		d += after[n] - before[n]
	}
	return d
}

// floodSysctl reads a sysctl file inside a namespace.
func floodSysctl(t *testing.T, ctx context.Context, ns, path string) int {
	t.Helper()
	res, err := harness.Run(ctx, "", "ip", "netns", "exec", ns, "cat", path)
	if err != nil || res.Code != 0 {
		t.Fatalf("read %s in %s: %v\n%s", path, ns, err, res)
	}
	n, err := strconv.Atoi(strings.TrimSpace(res.Stdout))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// floodLoad is the machine's load average, logged with the numbers: the
// rates depend on what else runs.
func floodLoad() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// floodWarmUp sends one allowed query per family so neighbour entries
// exist before the flood (the first packets would otherwise wait for
// ARP/ND).
func floodWarmUp(t *testing.T, ctx context.Context, topo *harness.Topology) {
	t.Helper()
	for _, f := range harness.Families {
		if o := query(ctx, topo, harness.Query{Name: "warm-up.example", Server: listen(f)}); !o.Answered() {
			t.Fatalf("warm-up query: %s", o)
		}
	}
}

// TestFloodBlocked: a bounded flood of blocked UDP queries (random letter
// case, IPv4 and IPv6, a new source port for every packet) while a
// separate client sends allowed queries at a modest rate. Blocked queries
// are dropped before conntrack, so the box's conntrack table grows by at
// most the allowed queries' flows; the allowed queries keep being
// answered; no flooded name reaches an upstream.
//
// Default: 50,000 queries in ~3 s; NFTDNS_FLOOD=long: 200,000 in 5 s.
func TestFloodBlocked(t *testing.T) {
	size, maxLoss := floodSize{50000, 3 * time.Second}, 0.05
	if floodLong() {
		size, maxLoss = floodSize{200000, 5 * time.Second}, 0.10
	}
	const (
		allowedRate     = 200   // queries per second from the separate client
		allowedPortBase = 30000 // its source ports: allowedPortBase+i for query i
	)

	ctx := testCtx(t, 2*time.Minute)
	topo := newTopo(t, ctx)
	cli := cliFor(t, topo)
	apply(t, ctx, topo, cli, standardList(t), longList(t))
	floodWarmUp(t, ctx, topo)

	names := []string{blockedName, "hosts-style.example", "mixed.listed.example", longBlocked100}
	before := conntrackCount(t, ctx, topo.Box)
	c0 := floodStatus(t, ctx, cli)

	// The allowed client: one query every 1/allowedRate s, each from a
	// new socket and source port (a new flow), alternating IPv4 and IPv6,
	// until the flood is over; bounded in count as well.
	stop := make(chan struct{})
	var mu sync.Mutex
	var allowedSent, allowedOK int
	var lost []string
	var inflight sync.WaitGroup
	senderDone := make(chan struct{})
	go func() {
		defer close(senderDone)
		start := time.Now()
		maxAllowed := int(size.d.Seconds()*allowedRate) * 2
		for i := 0; i < maxAllowed; i++ {
			// Query i is due at start + i/allowedRate; a late one goes
			// at once, so a busy machine does not lower the rate.
			select {
			case <-stop:
				return
			case <-ctx.Done():
				return
			case <-time.After(time.Until(start.Add(time.Duration(i) * time.Second / allowedRate))):
			}
			f := harness.Families[i%2]
			mu.Lock()
			allowedSent++
			mu.Unlock()
			inflight.Go(func() {
				// A source port of its own: with ephemeral ports a
				// few queries would reuse a port, hence a flow.
				o := query(ctx, topo, harness.Query{Name: fmt.Sprintf("ok%d.flood.example", i), Server: listen(f),
					SourcePort: uint16(allowedPortBase + i), Timeout: 2 * time.Second})
				mu.Lock()
				defer mu.Unlock()
				if o.Answered() && o.Upstream != 0 {
					allowedOK++
				} else if len(lost) < 10 {
					lost = append(lost, o.String())
				}
			})
		}
	}()
	// Let the allowed client run alone for a moment first.
	time.Sleep(200 * time.Millisecond)
	res, err := harness.Flood(ctx, topo.Client, harness.FloodSpec{
		Dst:      []netip.Addr{harness.Listen4, harness.Listen6},
		Names:    names,
		Case:     harness.Random,
		Count:    size.count,
		Duration: size.d,
		Rate:     int(float64(size.count) / size.d.Seconds()),
		Workers:  4,
	})
	time.Sleep(200 * time.Millisecond)
	close(stop)
	<-senderDone
	inflight.Wait()
	if err != nil {
		t.Fatalf("flood: %v", err)
	}
	after := conntrackCount(t, ctx, topo.Box)
	c1 := floodStatus(t, ctx, cli)

	boxBlocked := floodDelta(c0, c1, "blocked_ipv4_udp", "blocked_ipv6_udp")
	loss := float64(allowedSent-allowedOK) / float64(max(allowedSent, 1))
	t.Logf("%d CPUs, load average %s", runtime.NumCPU(), floodLoad())
	t.Logf("flood (%s): sent %d blocked queries in %s (%.0f pps, %d send errors); the box counted %d blocked (%.1f%% of sent)",
		size, res.Sent, res.Elapsed.Round(time.Millisecond), res.PPS(), res.Errors, boxBlocked, 100*float64(boxBlocked)/float64(max(res.Sent, 1)))
	t.Logf("allowed client (%d/s): %d sent, %d answered, loss %.2f%%", allowedRate, allowedSent, allowedOK, 100*loss)
	t.Logf("box conntrack entries: %d before, %d after (+%d; allowed flows %d)", before, after, after-before, allowedSent)
	for _, l := range lost {
		t.Logf("lost: %s", l)
	}

	// The sender's rate is the box's: over veth each send runs the box's
	// whole receive path. A loaded machine sends fewer; a tenth is still
	// a flood.
	if res.Sent < size.count/10 {
		t.Errorf("the flood sent only %d of %d packets (first error %v): too little to mean anything", res.Sent, size.count, res.Err)
	}
	if boxBlocked < uint64(res.Sent)/2 {
		t.Errorf("the box counted only %d of %d flooded queries as blocked", boxBlocked, res.Sent)
	}
	for _, n := range names {
		if k := topo.Log.CountName(n); k != 0 {
			t.Errorf("flooded name %q reached the upstreams %d times", n, k)
		}
	}
	if after > before+allowedSent {
		t.Errorf("conntrack grew by %d during the flood, more than the %d allowed flows: blocked queries created entries", after-before, allowedSent)
	}
	if after < before+allowedOK {
		t.Errorf("conntrack grew by %d, less than the %d answered allowed queries: the count does not see flows, so the check above proves nothing", after-before, allowedOK)
	}
	if allowedSent < int(size.d.Seconds()*allowedRate)/2 {
		t.Errorf("the allowed client sent only %d queries", allowedSent)
	}
	if loss > maxLoss {
		t.Errorf("allowed-query loss %.2f%% during the flood, want < %.0f%%", 100*loss, 100*maxLoss)
	}
}

// TestFloodAllowed: a bounded flood of allowed UDP queries, each from a new
// source port, sent as fast as the client can. nftdns passes every one (it
// is limited only by the NAT path: one conntrack entry per flow, up to
// nf_conntrack_max), and the box's conntrack table grows by exactly the
// flows it passed.
//
// Default: 20,000 queries, at most 3 s; NFTDNS_FLOOD=long: 100,000 (50,000
// distinct source ports per family), at most 5 s.
func TestFloodAllowed(t *testing.T) {
	size := floodSize{20000, 3 * time.Second}
	if floodLong() {
		size = floodSize{100000, 5 * time.Second}
	}
	const suffix = "allowed-flood.example"

	ctx := testCtx(t, 2*time.Minute)
	topo := newTopo(t, ctx)
	cli := cliFor(t, topo)
	apply(t, ctx, topo, cli, standardList(t))
	floodWarmUp(t, ctx, topo)

	var names []string
	for i := range 100 {
		names = append(names, fmt.Sprintf("af%d.%s", i, suffix))
	}
	ctMax := floodSysctl(t, ctx, topo.Box, "/proc/sys/net/netfilter/nf_conntrack_max")
	before := conntrackCount(t, ctx, topo.Box)
	c0 := floodStatus(t, ctx, cli)
	reached := func() int {
		return topo.Log.Count(func(r harness.Received) bool { return strings.HasSuffix(r.Name, suffix) })
	}

	start := time.Now()
	res, err := harness.Flood(ctx, topo.Client, harness.FloodSpec{
		Dst:      []netip.Addr{harness.Listen4, harness.Listen6},
		Names:    names,
		Count:    size.count,
		Duration: size.d,
		Workers:  2,
	})
	if err != nil {
		t.Fatalf("flood: %v", err)
	}
	// Wait until the upstreams stop receiving (bounded).
	n, lastChange := reached(), time.Now()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline) && time.Since(lastChange) < 300*time.Millisecond; {
		time.Sleep(50 * time.Millisecond)
		if m := reached(); m != n {
			n, lastChange = m, time.Now()
		}
	}
	settle := lastChange.Sub(start)
	after := conntrackCount(t, ctx, topo.Box)
	c1 := floodStatus(t, ctx, cli)

	passed := floodDelta(c0, c1, "passed_ipv4_udp", "passed_ipv6_udp")
	checked := floodDelta(c0, c1, "checked_ipv4_udp", "checked_ipv6_udp")
	growth := after - before
	t.Logf("%d CPUs, load average %s", runtime.NumCPU(), floodLoad())
	t.Logf("allowed flood (%s): sent %d in %s (%.0f pps, %d send errors)",
		size, res.Sent, res.Elapsed.Round(time.Millisecond), res.PPS(), res.Errors)
	t.Logf("box: checked %d, passed %d (%.0f qps over the send time); conntrack %d -> %d (+%d, %.3f per passed query; nf_conntrack_max %d)",
		checked, passed, float64(passed)/res.Elapsed.Seconds(), before, after, growth, float64(growth)/float64(max(passed, 1)), ctMax)
	t.Logf("upstreams received %d (%.1f%% of sent) in %s: %.0f qps end to end",
		n, 100*float64(n)/float64(max(res.Sent, 1)), settle.Round(time.Millisecond), float64(n)/settle.Seconds())

	if res.Sent < size.count/10 {
		t.Errorf("the flood sent only %d of %d packets (first error %v)", res.Sent, size.count, res.Err)
	}
	if passed < uint64(res.Sent)*9/10 {
		t.Errorf("nftdns passed %d of %d allowed queries sent", passed, res.Sent)
	}
	// One entry per passed flow; a few extra for stray packets at most.
	if uint64(growth) < passed*98/100 || uint64(growth) > passed+10 {
		t.Errorf("conntrack grew by %d for %d passed flows, want one entry per flow", growth, passed)
	}
	if n == 0 {
		t.Errorf("no flooded query reached an upstream")
	}
}
