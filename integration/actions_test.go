//go:build linux

package integration

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"nftdns/integration/harness"
)

// clientTxOff turns transmit checksum offload off on the client's veth, so
// that its packets carry real checksums and, more to the point, that it
// verifies the checksums of what comes back (a veth peer with offload on
// hands over CHECKSUM_PARTIAL packets that nobody checks).
func clientTxOff(t *testing.T, ctx context.Context, topo *harness.Topology) {
	t.Helper()
	res, err := harness.Run(ctx, "", "ip", "netns", "exec", topo.Client, "ethtool", "-K", "eth0", "tx", "off")
	if err != nil {
		t.Fatalf("ethtool -K eth0 tx off in the client: %v (%s)", err, res)
	}
}

// udpCsumErrors reads the client's UdpInCsumErrors + Udp6InCsumErrors.
func udpCsumErrors(t *testing.T, ctx context.Context, topo *harness.Topology) int {
	t.Helper()
	total := 0
	for _, f := range []string{"/proc/net/snmp", "/proc/net/snmp6"} {
		res, err := harness.Run(ctx, "", "ip", "netns", "exec", topo.Client, "cat", f)
		if err != nil {
			t.Fatalf("read %s: %v", f, err)
		}
		lines := strings.Split(res.Stdout, "\n")
		for i, l := range lines {
			if strings.HasPrefix(l, "Udp6InCsumErrors") {
				var n int
				fmt.Sscan(strings.Fields(l)[1], &n)
				total += n
			}
			if strings.HasPrefix(l, "Udp: InDatagrams") && i+1 < len(lines) {
				head, vals := strings.Fields(l), strings.Fields(lines[i+1])
				if j := slices.Index(head, "InCsumErrors"); j > 0 && j < len(vals) {
					var n int
					fmt.Sscan(vals[j], &n)
					total += n
				}
			}
		}
	}
	return total
}

// timedQuery is query with the client-side time from send to outcome.
func timedQuery(ctx context.Context, topo *harness.Topology, q harness.Query) (harness.Outcome, time.Duration) {
	t0 := time.Now()
	o := query(ctx, topo, q)
	return o, time.Since(t0)
}

// TestActions: for each action, what a client sees for a blocked name over
// UDP and TCP, IPv4 and IPv6 (Go client and dig), with transmit checksum
// offload off on the client; an allowed name stays answered by an
// upstream; a blocked name never reaches an upstream (log: it does).
func TestActions(t *testing.T) {
	for _, action := range []string{"drop", "reject", "nxdomain", "refused", "log"} {
		t.Run(action, func(t *testing.T) {
			ctx := testCtx(t, 3*time.Minute)
			topo := newTopo(t, ctx)
			clientTxOff(t, ctx, topo)
			cli := cliFor(t, topo)
			args := append(topo.ApplyArgs(standardList(t)), "--action", action, "--interface", harness.BoxClientIf)
			mustRun(t, ctx, cli, "apply", args...)
			csum0 := udpCsumErrors(t, ctx, topo)

			for _, c := range combos() {
				t.Run(c.String(), func(t *testing.T) {
					before := topo.Log.CountName(blockedName)
					o, el := timedQuery(ctx, topo, harness.Query{Name: blockedName, Type: dns.TypeA, Proto: c.p, Server: listen(c.f), Timeout: 2 * time.Second})
					t.Logf("go client: %s, after %v", o, el)
					reached := topo.Log.CountName(blockedName) - before
					udp := c.p == harness.UDP
					switch {
					case action == "log":
						expectAnswered(t, topo, o, c.f)
						if reached != 1 {
							t.Errorf("log mode: the upstreams saw the name %d times, want 1", reached)
						}
					case action == "drop":
						expectBlocked(t, topo, o)
						if !o.TimedOut() {
							t.Errorf("drop: want a timeout, got %s", o)
						}
					case (action == "nxdomain" || action == "refused") && udp:
						want := map[string]int{"nxdomain": dns.RcodeNameError, "refused": dns.RcodeRefused}[action]
						if o.Msg == nil {
							t.Fatalf("want an in-kernel %s answer, got %s", action, o)
						}
						m := o.Msg
						if m.Rcode != want || !m.Response || !m.RecursionAvailable || !m.RecursionDesired || m.Authoritative ||
							len(m.Question) != 1 || !strings.EqualFold(m.Question[0].Name, dns.Fqdn(o.Sent)) || len(m.Answer) != 0 {
							t.Errorf("answer is not a clean %s echo of the question: %v", action, m)
						}
						if reached != 0 {
							t.Errorf("the upstreams saw the blocked name %d times", reached)
						}
					default: // reject, and TCP with the answering actions: reset / port unreachable
						// gross sanity only: failed before the 2 s timeout
						if o.Answered() || o.TimedOut() || el >= 2*time.Second {
							t.Errorf("%s: want an immediate connection error, got %s after %v", action, o, el)
						}
						if reached != 0 {
							t.Errorf("the upstreams saw the blocked name %d times", reached)
						}
					}
					// dig: EDNS with a cookie, its own status word
					d, err := harness.Dig(ctx, topo.Client, listen(c.f), blockedName, "A", !udp)
					if err != nil {
						t.Fatalf("dig: %v", err)
					}
					t.Logf("dig: status %q noreply %v exit %d: %s", d.Status, d.NoReply, d.Cmd.Code, firstLine(d.Cmd.Stdout+d.Cmd.Stderr))
					if (action == "nxdomain" || action == "refused") && udp {
						if want := strings.ToUpper(map[string]string{"nxdomain": "NXDOMAIN", "refused": "REFUSED"}[action]); d.Status != want {
							t.Errorf("dig status %q, want %s", d.Status, want)
						}
					}
					// allowed names are unaffected
					a := query(ctx, topo, harness.Query{Name: allowedName, Type: dns.TypeA, Proto: c.p, Server: listen(c.f)})
					expectAnswered(t, topo, a, c.f)
				})
			}
			if n := udpCsumErrors(t, ctx, topo) - csum0; n != 0 {
				t.Errorf("the client counted %d UDP checksum errors", n)
			}
			st := status(t, ctx, cli, topo)
			t.Logf("counters: action_%s=%d list_0=%d", action, st.Counters["action_"+action], st.Counters["list_0"])
			if st.Counters["action_"+action] == 0 || st.Counters["list_0"] == 0 {
				t.Errorf("action_%s / list_0 counters did not count: %v", action, st.Counters)
			}
		})
	}
}

// TestActionZeroChecksum: an IPv4 query sent with a zero UDP checksum ("no
// checksum") gets an NXDOMAIN answer whose checksum is zero too, which the
// client accepts.
func TestActionZeroChecksum(t *testing.T) {
	ctx := testCtx(t, 2*time.Minute)
	topo := newTopo(t, ctx)
	clientTxOff(t, ctx, topo)
	cli := cliFor(t, topo)
	mustRun(t, ctx, cli, "apply", append(topo.ApplyArgs(standardList(t)), "--action", "nxdomain", "--interface", harness.BoxClientIf)...)
	csum0 := udpCsumErrors(t, ctx, topo)
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(blockedName), dns.TypeA)
	wire, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	got, err := harness.RawUDPExchange(ctx, topo.Client, harness.ClientAddr4, listen(harness.V4), wire, true, 2*time.Second)
	if err != nil {
		t.Fatalf("raw exchange: %v", err)
	}
	r := new(dns.Msg)
	if err := r.Unpack(got.Payload); err != nil {
		t.Fatalf("answer does not parse: %v", err)
	}
	if r.Rcode != dns.RcodeNameError || r.Id != m.Id {
		t.Errorf("answer %v", r)
	}
	if got.Checksum != 0 {
		t.Errorf("answer UDP checksum 0x%04x, want 0 (none, as the query)", got.Checksum)
	}
	if n := udpCsumErrors(t, ctx, topo) - csum0; n != 0 {
		t.Errorf("the client counted %d UDP checksum errors", n)
	}
}

// TestPerListActions: one list drops, another answers NXDOMAIN; a name in
// both follows the first list given.
func TestPerListActions(t *testing.T) {
	ctx := testCtx(t, 2*time.Minute)
	topo := newTopo(t, ctx)
	clientTxOff(t, ctx, topo)
	cli := cliFor(t, topo)
	dropList := writeList(t, "drop.list", "dropped.example", "both.example")
	nxList := writeList(t, "nx.list", "nx.example", "both.example")
	cfg := writeList(t, "nftdns.yaml",
		"blocklist:",
		"  - {path: "+dropList+", action: drop}",
		"  - {path: "+nxList+", action: nxdomain}",
		"interface: ["+harness.BoxClientIf+"]")
	mustRun(t, ctx, cli, "apply", append(topo.ApplyArgs(), "--config", cfg)...)
	for _, f := range harness.Families {
		d := query(ctx, topo, harness.Query{Name: "dropped.example", Proto: harness.UDP, Server: listen(f), Timeout: blockTimeout})
		expectBlocked(t, topo, d)
		if !d.TimedOut() {
			t.Errorf("dropped.example: want a timeout, got %s", d)
		}
		b := query(ctx, topo, harness.Query{Name: "both.example", Proto: harness.UDP, Server: listen(f), Timeout: blockTimeout})
		if !b.TimedOut() {
			t.Errorf("both.example (first in the drop list): want a timeout, got %s", b)
		}
		n, nel := timedQuery(ctx, topo, harness.Query{Name: "nx.example", Proto: harness.UDP, Server: listen(f), Timeout: 2 * time.Second})
		if n.Msg == nil || n.Msg.Rcode != dns.RcodeNameError {
			t.Errorf("nx.example over %v: want NXDOMAIN, got %s", f, n)
		}
		t.Logf("%v: dropped: %v; nx: %v after %v", f, d.Err, n, nel)
		expectAnswered(t, topo, query(ctx, topo, harness.Query{Name: allowedName, Proto: harness.UDP, Server: listen(f)}), f)
	}
	st := status(t, ctx, cli, topo)
	if st.Counters["list_0"] != 4 || st.Counters["list_1"] != 2 || st.Counters["action_nxdomain"] != 2 || st.Counters["action_drop"] != 4 {
		t.Errorf("per-list counters %v", st.Counters)
	}
}

// TestAnswerLatency measures, in one run, the time from query to answer for
// a blocked name answered in the kernel and for an allowed name answered by
// an upstream (medians; logged, not asserted). NFTDNS_LATENCY_N sets the
// number of queries of each kind (default 200).
func TestAnswerLatency(t *testing.T) {
	n := 200
	if v := os.Getenv("NFTDNS_LATENCY_N"); v != "" {
		fmt.Sscan(v, &n)
	}
	ctx := testCtx(t, 3*time.Minute)
	topo := newTopo(t, ctx)
	cli := cliFor(t, topo)
	mustRun(t, ctx, cli, "apply", append(topo.ApplyArgs(standardList(t)), "--action", "nxdomain", "--interface", harness.BoxClientIf)...)
	for _, f := range harness.Families {
		var blocked, allowed []time.Duration
		for i := 0; i < n; i++ {
			// interleaved, so both see the same machine load
			b, bel := timedQuery(ctx, topo, harness.Query{Name: blockedName, Proto: harness.UDP, Server: listen(f), Timeout: 2 * time.Second})
			a, ael := timedQuery(ctx, topo, harness.Query{Name: allowedName, Proto: harness.UDP, Server: listen(f), Timeout: 2 * time.Second})
			if b.Msg == nil || a.Msg == nil {
				t.Fatalf("query %d: blocked %s, allowed %s", i, b, a)
			}
			blocked, allowed = append(blocked, bel), append(allowed, ael)
		}
		slices.Sort(blocked)
		slices.Sort(allowed)
		t.Logf("%v, %d queries each: median in-kernel NXDOMAIN %v, median upstream answer %v", f, n, blocked[n/2], allowed[n/2])
	}
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// status runs `nftdns status --json` for the topology's box.
func status(t *testing.T, ctx context.Context, cli *harness.CLI, topo *harness.Topology) harness.Status {
	t.Helper()
	res := mustRun(t, ctx, cli, "status", "--json")
	st, err := harness.ParseStatus(res.Stdout)
	if err != nil {
		t.Fatalf("status: %v", err)
	}
	return st
}
