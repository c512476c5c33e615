//go:build linux

package integration

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"nftdns/integration/harness"
)

// blockTimeout is how long a query expected to be dropped waits. The
// upstream query log, not the timeout, is what proves nothing got through.
const blockTimeout = time.Second

// TestAllowed: names not on the list are DNATed to an upstream of the same
// family and answered, over UDP and TCP, IPv4 and IPv6, for several record
// types, and the upstream sees the box's (masqueraded) address.
func TestAllowed(t *testing.T) {
	ctx := testCtx(t, 2*time.Minute)
	topo := newTopo(t, ctx)
	cli := cliFor(t, topo)
	apply(t, ctx, topo, cli, standardList(t))

	for _, c := range combos() {
		for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeTXT} {
			t.Run(fmt.Sprintf("%s/%s", c, dns.TypeToString[qt]), func(t *testing.T) {
				o := query(ctx, topo, harness.Query{Name: allowedName, Type: qt, Proto: c.p, Server: listen(c.f)})
				expectAnswered(t, topo, o, c.f)
				t.Logf("%s", o)
			})
		}
	}
}

// TestBlockedAnyCase: every listed name is dropped in any letter case over
// all four family/transport pairs, and never reaches an upstream.
func TestBlockedAnyCase(t *testing.T) {
	ctx := testCtx(t, 2*time.Minute)
	topo := newTopo(t, ctx)
	cli := cliFor(t, topo)
	apply(t, ctx, topo, cli, standardList(t))

	names := []struct {
		desc, name string
		cs         harness.Case
	}{
		{"lower", blockedName, harness.AsIs},
		{"upper", blockedName, harness.Upper},
		{"mixed", "bLoCkEd.ExAmPlE", harness.AsIs},
		{"random-1", blockedName, harness.Random},
		{"random-2", blockedName, harness.Random},
		{"hosts-line", "hosts-style.example", harness.AsIs},
		{"hosts-line-tab-comment", "tab-hosts.example", harness.AsIs},
		{"listed-mixed-queried-lower", "mixed.listed.example", harness.AsIs},
		{"listed-mixed-queried-other", "mIxEd.lIsTeD.eXaMpLe", harness.AsIs},
	}
	type item struct {
		desc string
		c    combo
	}
	var qs []harness.Query
	var items []item
	for _, n := range names {
		for _, c := range combos() {
			qs = append(qs, harness.Query{Name: n.name, Case: n.cs, Proto: c.p, Server: listen(c.f), Timeout: blockTimeout})
			items = append(items, item{n.desc, c})
		}
	}
	outs := harness.ExchangeAll(ctx, topo.Client, qs, 32)
	for i, o := range outs {
		t.Run(fmt.Sprintf("%s/%s", items[i].desc, items[i].c), func(t *testing.T) {
			expectBlocked(t, topo, o)
		})
	}
	// Control: the same box still answers an allowed name on all four.
	for _, c := range combos() {
		expectAnswered(t, topo, query(ctx, topo, harness.Query{Name: allowedName, Proto: c.p, Server: listen(c.f)}), c.f)
	}
}

// TestLongNames: names longer than a 64-byte set key are matched on their
// whole length, in any case, including differences after byte 64.
func TestLongNames(t *testing.T) {
	ctx := testCtx(t, 2*time.Minute)
	topo := newTopo(t, ctx)
	cli := cliFor(t, topo)
	apply(t, ctx, topo, cli, standardList(t), longList(t))

	// The 250-byte name with only its last labels in upper case: a fold
	// that stops at byte 64 (or 56) would miss it.
	tailUpper := longBlocked250[:len(longBlocked250)-len("long-blocked.example")] + "LONG-BLOCKED.EXAMPLE"
	cases := []struct {
		desc    string
		name    string
		blocked bool
	}{
		{"blocked-100", longBlocked100, true},
		{"blocked-250", longBlocked250, true},
		{"blocked-100-upper", strings.ToUpper(longBlocked100), true},
		{"blocked-250-random-case", harness.ApplyCase(longBlocked250, harness.Random), true},
		{"blocked-250-tail-upper", tailUpper, true},
		{"allowed-100", longAllowed100, false},
		{"allowed-250-same-first-240-bytes", longAllowed250, false},
	}
	for _, tc := range cases {
		for _, c := range combos() {
			t.Run(fmt.Sprintf("%s/%s", tc.desc, c), func(t *testing.T) {
				t.Parallel()
				o := query(ctx, topo, harness.Query{Name: tc.name, Proto: c.p, Server: listen(c.f), Timeout: blockTimeout})
				if tc.blocked {
					expectBlocked(t, topo, o)
				} else {
					expectAnswered(t, topo, o, c.f)
				}
			})
		}
	}
	if w := harness.WireLen(longBlocked250); w != 250 {
		t.Fatalf("test setup: long name has %d wire bytes", w)
	}
}

// TestExactMatch: a listed name blocks only itself, not subdomains,
// longer or shorter names sharing a prefix or suffix.
func TestExactMatch(t *testing.T) {
	ctx := testCtx(t, 2*time.Minute)
	topo := newTopo(t, ctx)
	cli := cliFor(t, topo)
	apply(t, ctx, topo, cli, writeList(t, "exact.list", blockedName))

	for _, name := range []string{"sub.blocked.example", "blocked.example.com", "xblocked.example", "blocked.exampl", "blocked.examplf", "example"} {
		for _, c := range combos() {
			t.Run(fmt.Sprintf("%s/%s", name, c), func(t *testing.T) {
				t.Parallel()
				o := query(ctx, topo, harness.Query{Name: name, Proto: c.p, Server: listen(c.f)})
				expectAnswered(t, topo, o, c.f)
			})
		}
	}
	for _, c := range combos() {
		t.Run("control-"+c.String(), func(t *testing.T) {
			t.Parallel()
			expectBlocked(t, topo, query(ctx, topo, harness.Query{Name: blockedName, Proto: c.p, Server: listen(c.f), Timeout: blockTimeout}))
		})
	}
}

// TestRoundRobin: 300 new flows (fresh source ports) per family and
// transport are spread over the three upstreams of that family, each
// getting 25-42% (an even share is 33%), and none is lost.
func TestRoundRobin(t *testing.T) {
	ctx := testCtx(t, 3*time.Minute)
	topo := newTopo(t, ctx)
	cli := cliFor(t, topo)
	apply(t, ctx, topo, cli, standardList(t))

	const flows = 300
	lo, hi := flows*25/100, flows*42/100
	for _, c := range combos() {
		t.Run(c.String(), func(t *testing.T) {
			per := map[int]int{}
			lost := 0
			for i := range flows {
				o := query(ctx, topo, harness.Query{Name: fmt.Sprintf("rr%d.%s.example", i, c), Proto: c.p, Server: listen(c.f)})
				if !o.Answered() || o.Upstream == 0 {
					lost++
					if lost <= 5 {
						t.Errorf("flow %d: %s", i, o)
					}
					continue
				}
				per[o.Upstream]++
			}
			if lost != 0 {
				t.Errorf("%d of %d queries lost", lost, flows)
			}
			for _, u := range topo.Upstreams {
				if n := per[u.ID]; n < lo || n > hi {
					t.Errorf("%s got %d of %d queries, want %d..%d (distribution %v)", u.Name(), n, flows, lo, hi, per)
				}
			}
			// Each upstream's answers must have come from its own
			// address of this family (no cross-family DNAT).
			wrong := topo.Log.Count(func(r harness.Received) bool {
				return strings.HasSuffix(r.Name, "."+c.String()+".example") && r.Family != c.f
			})
			if wrong != 0 {
				t.Errorf("%d %s queries reached an upstream over the other family", wrong, c)
			}
			t.Logf("%s: %v", c, per)
		})
	}
}

// TestOutsidersGetNothing: a source outside the client networks gets no
// answer from the listen address, and nothing reaches an upstream.
func TestOutsidersGetNothing(t *testing.T) {
	ctx := testCtx(t, 2*time.Minute)
	topo := newTopo(t, ctx)
	cli := cliFor(t, topo)
	apply(t, ctx, topo, cli, standardList(t))

	var qs []harness.Query
	for _, c := range combos() {
		qs = append(qs, harness.Query{Name: "outsider-" + c.String() + ".example", Proto: c.p, Server: listen(c.f), Timeout: blockTimeout})
	}
	for i, o := range harness.ExchangeAll(ctx, topo.Outsider, qs, 8) {
		t.Run(combos()[i].String(), func(t *testing.T) {
			if o.Answered() {
				t.Errorf("outsider got %s", o)
			}
			if !o.TimedOut() {
				t.Errorf("want a silent drop (timeout), got %s", o)
			}
			if n := topo.Log.CountName(o.Sent); n != 0 {
				t.Errorf("outsider query reached the upstreams %d time(s)", n)
			}
		})
	}
}

// TestNoOtherForwarding: the box forwards nothing but DNS to the listen
// address: ping and UDP/TCP to another port at an upstream address do not
// arrive. (TestHarnessSelfTest shows the same probes arrive when nothing
// filters.)
func TestNoOtherForwarding(t *testing.T) {
	ctx := testCtx(t, 2*time.Minute)
	topo := newTopo(t, ctx)
	cli := cliFor(t, topo)
	apply(t, ctx, topo, cli, standardList(t))

	for _, f := range harness.Families {
		dst := topo.Upstreams[1].Addr(f)
		port := netip.AddrPortFrom(dst, harness.ProbePort)
		for _, p := range []struct {
			name  string
			probe func() (bool, error)
		}{
			{"ping", func() (bool, error) { return topo.Ping(ctx, topo.Client, dst) }},
			{"udp", func() (bool, error) { return topo.ProbeUDP(ctx, topo.Client, port) }},
			{"tcp", func() (bool, error) { return topo.ProbeTCP(ctx, topo.Client, port) }},
		} {
			t.Run(fmt.Sprintf("%s/%s", f, p.name), func(t *testing.T) {
				arrived, err := p.probe()
				if err != nil {
					t.Fatal(err)
				}
				if arrived {
					t.Errorf("%s from a client to %s arrived at the upstream", p.name, dst)
				}
			})
		}
	}
}

// TestDirectToUpstream: a client sending a blocked name straight to an
// upstream's address (bypassing the listen address) gets nothing.
func TestDirectToUpstream(t *testing.T) {
	ctx := testCtx(t, 2*time.Minute)
	topo := newTopo(t, ctx)
	cli := cliFor(t, topo)
	apply(t, ctx, topo, cli, standardList(t))

	var qs []harness.Query
	var labels []string
	for _, c := range combos() {
		for _, u := range topo.Upstreams {
			for _, cs := range []harness.Case{harness.AsIs, harness.Random} {
				qs = append(qs, harness.Query{Name: blockedName, Case: cs, Proto: c.p, Server: u.Addr(c.f), Timeout: blockTimeout})
				labels = append(labels, fmt.Sprintf("%s/%s/case%d", c, u.Name(), cs))
			}
		}
	}
	for i, o := range harness.ExchangeAll(ctx, topo.Client, qs, 32) {
		t.Run(labels[i], func(t *testing.T) { expectBlocked(t, topo, o) })
	}
}

// TestDig: dig (BIND's client, EDNS with a cookie) gets allowed names
// answered and blocked names dropped over UDP and TCP, IPv4 and IPv6.
func TestDig(t *testing.T) {
	ctx := testCtx(t, 2*time.Minute)
	topo := newTopo(t, ctx)
	cli := cliFor(t, topo)
	apply(t, ctx, topo, cli, standardList(t))

	for _, c := range combos() {
		for _, tc := range []struct {
			name, qtype string
			blocked     bool
		}{
			{allowedName, "A", false},
			{allowedName, "AAAA", false},
			{"dig-" + allowedName, "TXT", false},
			{blockedName, "A", true},
			{"BLOCKED.example", "AAAA", true},
		} {
			t.Run(fmt.Sprintf("%s/%s/%s", c, tc.name, tc.qtype), func(t *testing.T) {
				t.Parallel()
				r, err := harness.Dig(ctx, topo.Client, listen(c.f), tc.name, tc.qtype, c.p == harness.TCP)
				if err != nil {
					t.Fatal(err)
				}
				if tc.blocked {
					if !r.NoReply {
						t.Errorf("blocked name answered: status %s\n%s", r.Status, r.Cmd)
					}
					if n := topo.Log.CountName(tc.name); n != 0 {
						t.Errorf("blocked name reached the upstreams %d time(s)", n)
					}
					return
				}
				if r.NoReply || r.Status != "NOERROR" || r.AnswerUpstream() == 0 {
					t.Errorf("want NOERROR from an upstream, got status %q upstream %d\n%s", r.Status, r.AnswerUpstream(), r.Cmd)
				}
			})
		}
	}
}

// lenName returns a name of exactly n wire bytes (3 <= n <= 70): one label
// for short ones, "<label>.test" from 8 bytes on. Each length lands in a
// different set-key width in the kernel.
func lenName(n int, fill string) string {
	if n < 8 {
		return strings.Repeat(fill, n-2)
	}
	return strings.Repeat(fill, n-7) + ".test"
}

// TestNameLengths: a listed name of every wire length from 3 to 64 bytes
// (every set-key width) is blocked, over all four pairs, and a name of the
// same length differing in one letter passes.
func TestNameLengths(t *testing.T) {
	ctx := testCtx(t, 3*time.Minute)
	topo := newTopo(t, ctx)
	cli := cliFor(t, topo)
	var lines []string
	for n := 3; n <= 64; n++ {
		lines = append(lines, lenName(n, "k"))
	}
	apply(t, ctx, topo, cli, writeList(t, "lengths.list", lines...))

	var qs []harness.Query
	for n := 3; n <= 64; n++ {
		for _, c := range combos() {
			qs = append(qs,
				harness.Query{Name: lenName(n, "k"), Case: harness.Random, Proto: c.p, Server: listen(c.f), Timeout: blockTimeout},
				harness.Query{Name: "j" + lenName(n, "k")[1:], Proto: c.p, Server: listen(c.f)})
		}
	}
	for _, o := range harness.ExchangeAll(ctx, topo.Client, qs, 64) {
		n := harness.WireLen(o.Query.Name)
		t.Run(fmt.Sprintf("len%d/%s/%s-%s", n, o.Query.Name[:1], o.Query.Server, o.Query.Proto), func(t *testing.T) {
			if o.Query.Name[0] == 'k' {
				expectBlocked(t, topo, o)
			} else {
				f := harness.V4
				if o.Query.Server.Is6() {
					f = harness.V6
				}
				expectAnswered(t, topo, o, f)
			}
		})
	}
}
