//go:build linux

package integration

import (
	"fmt"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/miekg/dns"

	"nftdns/integration/harness"
)

// handRuleset is a minimal stand-in for nftdns: DNAT of DNS on the listen
// addresses to upstream-1, masquerade towards the upstreams. It lets the
// harness be checked without the CLI.
const handRuleset = `
table inet harness_selftest {
	chain nat-prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr 198.18.1.1 meta l4proto { udp, tcp } th dport 53 dnat ip to 198.18.2.11
		ip6 daddr 2001:db8:1::1 meta l4proto { udp, tcp } th dport 53 dnat ip6 to 2001:db8:2::11
	}
	chain nat-postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "up0" masquerade
	}
}
`

// TestHarnessSelfTest checks the harness itself, without nftdns: the
// probes see forwarded traffic when nothing filters it (so a test asserting
// "did not arrive" can fail), the Go client and dig get answers through a
// hand-written DNAT, and the upstream logs show the masqueraded source.
func TestHarnessSelfTest(t *testing.T) {
	ctx := testCtx(t, 2*time.Minute)
	topo := newTopo(t, ctx)
	up1 := topo.Upstreams[0]

	t.Run("probes-arrive-without-filter", func(t *testing.T) {
		for _, f := range harness.Families {
			dst := up1.Addr(f)
			if ok, err := topo.Ping(ctx, topo.Client, dst); err != nil || !ok {
				t.Errorf("ping %s from client: arrived=%v err=%v", dst, ok, err)
			}
			if ok, err := topo.ProbeUDP(ctx, topo.Client, netip.AddrPortFrom(dst, harness.ProbePort)); err != nil || !ok {
				t.Errorf("udp probe %s: arrived=%v err=%v", dst, ok, err)
			}
			if ok, err := topo.ProbeTCP(ctx, topo.Client, netip.AddrPortFrom(dst, harness.ProbePort)); err != nil || !ok {
				t.Errorf("tcp probe %s: arrived=%v err=%v", dst, ok, err)
			}
		}
	})

	t.Run("direct-query-without-filter", func(t *testing.T) {
		for _, c := range combos() {
			for _, u := range topo.Upstreams {
				o := query(ctx, topo, harness.Query{Name: "direct.example", Proto: c.p, Server: u.Addr(c.f)})
				if !o.Answered() || o.Upstream != u.ID {
					t.Errorf("%s: want answer from upstream-%d, got %s", c, u.ID, o)
				}
			}
		}
	})

	t.Run("listen-without-ruleset-gets-nothing", func(t *testing.T) {
		o := query(ctx, topo, harness.Query{Name: allowedName, Server: harness.Listen4, Timeout: time.Second})
		if o.Answered() {
			t.Errorf("nothing listens on the box, yet %s", o)
		}
	})

	if err := harness.NftScript(ctx, topo.Box, handRuleset); err != nil {
		t.Fatalf("load hand-written ruleset: %v", err)
	}

	t.Run("go-client-through-dnat", func(t *testing.T) {
		for _, c := range combos() {
			for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeTXT} {
				o := query(ctx, topo, harness.Query{Name: "MiXeD.Case.Example", Type: qt, Proto: c.p, Server: listen(c.f)})
				expectAnswered(t, topo, o, c.f)
				if o.Upstream != 1 {
					t.Errorf("%s: the hand ruleset only DNATs to upstream-1, got %s", c, o)
				}
			}
		}
		// Letter case reaches the server unchanged (QName keeps it).
		if n := topo.Log.Count(func(r harness.Received) bool { return r.QName == "MiXeD.Case.Example." }); n == 0 {
			t.Errorf("servers did not log the name in its original case")
		}
	})

	t.Run("long-names", func(t *testing.T) {
		for _, name := range []string{longAllowed100, longAllowed250} {
			o := query(ctx, topo, harness.Query{Name: name, Proto: harness.UDP, Server: harness.Listen4})
			expectAnswered(t, topo, o, harness.V4)
		}
	})

	t.Run("dig-through-dnat", func(t *testing.T) {
		for _, c := range combos() {
			r, err := harness.Dig(ctx, topo.Client, listen(c.f), "dig.example", "A", c.p == harness.TCP)
			if err != nil {
				t.Fatal(err)
			}
			if r.NoReply || r.Status != "NOERROR" || r.AnswerUpstream() != 1 {
				t.Errorf("%s: dig: status=%q upstream=%d\n%s", c, r.Status, r.AnswerUpstream(), r.Cmd)
			}
		}
	})

	t.Run("fixed-source-port-is-one-flow", func(t *testing.T) {
		// Conntrack keeps the NAT choice of a flow: the same UDP source
		// port must keep reaching the same upstream.
		for i := range 3 {
			o := query(ctx, topo, harness.Query{Name: fmt.Sprintf("pin%d.example", i), Server: harness.Listen4, SourcePort: 40053})
			expectAnswered(t, topo, o, harness.V4)
		}
	})

	t.Run("outsider-is-wired", func(t *testing.T) {
		// The hand ruleset does not filter sources, so an outsider gets
		// through: proves the outsider network really reaches the box
		// and the outsider tests measure the filter, not the wiring.
		o := harness.Exchange(ctx, topo.Outsider, harness.Query{Name: "outsider.example", Server: harness.Listen4})
		if !o.Answered() {
			t.Errorf("outsider through unfiltered DNAT: %s", o)
		}
	})
}

// TestHarnessCleanup checks that Close removes every namespace.
func TestHarnessCleanup(t *testing.T) {
	requireRoot(t)
	ctx := testCtx(t, time.Minute)
	topo, err := harness.New(ctx)
	if err != nil {
		t.Fatal(err)
	}
	names := []string{topo.Client, topo.Box, topo.Upstream, topo.Outsider}
	for _, n := range names {
		if _, err := os.Stat("/run/netns/" + n); err != nil {
			t.Errorf("namespace %s missing while open: %v", n, err)
		}
	}
	if err := topo.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	for _, n := range names {
		if _, err := os.Stat("/run/netns/" + n); err == nil {
			t.Errorf("namespace %s still exists after Close", n)
		}
	}
	if err := topo.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestLongName(t *testing.T) {
	t.Parallel()
	for _, n := range []int{24, 25, 64, 65, 66, 100, 128, 129, 250, 255} {
		name := harness.LongName(n, "long-blocked.example", 'x')
		if got := harness.WireLen(name); got != n {
			t.Errorf("LongName(%d) has wire length %d: %q", n, got, name)
		}
		if _, ok := dns.IsDomainName(name); !ok {
			t.Errorf("LongName(%d) is not a valid name: %q", n, name)
		}
	}
}

func TestParseStatus(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, in string }{
		{"flat", `{"generation": 3, "counters": {"checked_ipv4_udp": 7}}`},
		{"objects", `{"generation": 3, "counters": {"checked_ipv4_udp": {"packets": 7, "bytes": 300}}}`},
		{"list", `{"state": {"generation": 3}, "kernel": {"counters": [{"name": "checked_ipv4_udp", "packets": 7}]}}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, err := harness.ParseStatus(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if !st.HasGeneration || st.Generation != 3 || st.Counters["checked_ipv4_udp"] != 7 {
				t.Errorf("got %+v", st)
			}
		})
	}
}
