//go:build linux

package integration

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"nftdns/integration/harness"
	"nftdns/rules"
)

// counters reads the box's kernel counters through status --json.
func counters(t *testing.T, ctx context.Context, cli *harness.CLI) map[string]uint64 {
	t.Helper()
	st, err := harness.ParseStatus(mustRun(t, ctx, cli, "status", "--json").Stdout)
	if err != nil {
		t.Fatal(err)
	}
	return st.Counters
}

func counterName(kind string, c combo) string {
	return rules.CounterName(kind, c.f.String(), string(c.p))
}

// udpFrom sends one UDP query from an unconnected socket in ns and returns
// the source address of the answer as the client's kernel delivered it:
// a connected socket would silently drop an answer from any other address,
// this one shows where it came from.
func udpFrom(ctx context.Context, ns string, server netip.Addr, name string) (netip.AddrPort, *dns.Msg, error) {
	var pc net.PacketConn
	if err := harness.Do(ns, func() (err error) {
		pc, err = net.ListenPacket("udp", ":0")
		return err
	}); err != nil {
		return netip.AddrPort{}, nil, err
	}
	defer pc.Close()
	stop := context.AfterFunc(ctx, func() { pc.Close() })
	defer stop()
	if err := pc.SetDeadline(time.Now().Add(harness.DefaultTimeout)); err != nil {
		return netip.AddrPort{}, nil, err
	}
	req := new(dns.Msg)
	req.SetQuestion(dns.Fqdn(name), dns.TypeTXT)
	wire, err := req.Pack()
	if err != nil {
		return netip.AddrPort{}, nil, err
	}
	if _, err := pc.WriteTo(wire, net.UDPAddrFromAddrPort(netip.AddrPortFrom(server, 53))); err != nil {
		return netip.AddrPort{}, nil, err
	}
	buf := make([]byte, 4096)
	n, from, err := pc.ReadFrom(buf)
	if err != nil {
		return netip.AddrPort{}, nil, err
	}
	m := new(dns.Msg)
	if err := m.Unpack(buf[:n]); err != nil {
		return netip.AddrPort{}, nil, err
	}
	src := from.(*net.UDPAddr).AddrPort()
	return netip.AddrPortFrom(src.Addr().Unmap(), src.Port()), m, nil
}

// TestIntercept: a client that asks a hard-coded "public" resolver
// (203.0.113.53, 2001:db8:53::53, reachable through the box) gets no
// answer without --intercept (the forward policy drops the query), and with
// it is answered by the upstreams, round robin, with answers that come from
// the address it asked; blocked names stay blocked. The box's own queries
// and those of sources outside the client networks are not intercepted.
func TestIntercept(t *testing.T) {
	ctx := testCtx(t, 4*time.Minute)
	topo := newTopo(t, ctx)
	if err := topo.AddPublicResolver(ctx); err != nil {
		t.Fatal(err)
	}
	cli := cliFor(t, topo)
	publicGot := func(name string) int {
		return topo.Log.Count(func(r harness.Received) bool { return r.Upstream == harness.PublicID && r.Name == name })
	}

	// The public resolver answers whoever reaches it: the box itself,
	// before any ruleset, proves the route.
	for _, f := range harness.Families {
		o := harness.Exchange(ctx, topo.Box, harness.Query{Name: "route.example", Server: harness.Public(f)})
		if o.Upstream != harness.PublicID {
			t.Fatalf("setup: the box cannot reach the public resolver over %s: %s", f, o)
		}
	}

	// Without --intercept: dropped by the forward policy.
	apply(t, ctx, topo, cli, standardList(t))
	t.Run("off", func(t *testing.T) {
		before := counters(t, ctx, cli)
		var qs []harness.Query
		for _, c := range combos() {
			qs = append(qs, harness.Query{Name: "off-" + c.String() + ".example", Proto: c.p, Server: harness.Public(c.f), Timeout: blockTimeout})
		}
		for i, o := range harness.ExchangeAll(ctx, topo.Client, qs, 8) {
			if o.Answered() {
				t.Errorf("%s: answered without --intercept: %s", combos()[i], o)
			}
			if n := topo.Log.CountName(qs[i].Name); n != 0 {
				t.Errorf("%s: the query reached a resolver %d time(s)", combos()[i], n)
			}
		}
		after := counters(t, ctx, cli)
		if d := after[rules.CounterForwardDropped] - before[rules.CounterForwardDropped]; d < uint64(len(qs)) {
			t.Errorf("forward_dropped moved by %d, want at least %d", d, len(qs))
		}
		for k, v := range after {
			if strings.HasPrefix(k, rules.CounterIntercepted) && v != 0 {
				t.Errorf("counter %s = %d without --intercept", k, v)
			}
		}
	})

	mustRun(t, ctx, cli, "apply", append(topo.ApplyArgs(standardList(t)), "--intercept")...)
	st := mustRun(t, ctx, cli, "status").Stdout
	if !strings.Contains(st, "intercept:  on") || !strings.Contains(st, "intercepted_ipv6_tcp") {
		t.Errorf("status does not show intercept:\n%s", st)
	}
	// The operator's nft can list what the kernel holds.
	if rs, err := harness.ListRuleset(ctx, topo.Box); err != nil || !strings.Contains(rs, `ip saddr != @upstreams4 ip daddr != @listen4 udp dport 53 counter name "intercepted_ipv4_udp" dnat ip to numgen inc mod 3 map @rr4`) {
		t.Errorf("nft list ruleset: %v\n%s", err, rs)
	}

	for _, c := range combos() {
		t.Run("on/"+c.String(), func(t *testing.T) {
			pub := harness.Public(c.f)
			before := counters(t, ctx, cli)
			// Allowed name: answered by one of the upstreams (not the
			// public resolver), which saw the box's masquerade address.
			// The client's socket is connected to the public address,
			// so the answer came from there.
			name := "icpt-" + c.String() + ".example"
			o := query(ctx, topo, harness.Query{Name: name, Proto: c.p, Server: pub})
			expectAnswered(t, topo, o, c.f)
			if !o.Answered() {
				t.FailNow() // the rest would only time out
			}
			if n := publicGot(name); n != 0 {
				t.Errorf("the public resolver got the intercepted query %d time(s)", n)
			}
			// dig (the independent client) agrees; it ignores answers
			// from an unexpected source.
			d, err := harness.Dig(ctx, topo.Client, pub, "dig-"+c.String()+".example", "TXT", c.p == harness.TCP)
			if err != nil {
				t.Fatal(err)
			}
			if d.Status != "NOERROR" || d.AnswerUpstream() < 1 || d.AnswerUpstream() > harness.NumUpstreams {
				t.Errorf("dig @%s: status %q, upstream %d\n%s", pub, d.Status, d.AnswerUpstream(), d.Cmd)
			}
			// Blocked names are checked as for the listen address.
			expectBlocked(t, topo, query(ctx, topo, harness.Query{Name: blockedName, Case: harness.Random, Proto: c.p, Server: pub, Timeout: blockTimeout}))
			if n := publicGot(blockedName); n != 0 {
				t.Errorf("blocked name reached the public resolver")
			}
			// Round robin over new flows.
			const flows = 30
			per := map[int]int{}
			for i := range flows {
				o := query(ctx, topo, harness.Query{Name: fmt.Sprintf("rr%d.%s.icpt.example", i, c), Proto: c.p, Server: pub})
				if !o.Answered() {
					t.Errorf("flow %d: %s", i, o)
					continue
				}
				per[o.Upstream]++
			}
			for _, u := range topo.Upstreams {
				// numgen takes strict turns; a new flow that reuses
				// the port of a live conntrack entry skips one.
				if n := per[u.ID]; n < flows/3-3 || n > flows/3+3 {
					t.Errorf("%s got %d of %d intercepted flows (distribution %v)", u.Name(), n, flows, per)
				}
			}
			after := counters(t, ctx, cli)
			sent := uint64(flows + 2) // the allowed name, dig, the round robin
			if d := after[counterName(rules.CounterIntercepted, c)] - before[counterName(rules.CounterIntercepted, c)]; d < sent-3 || d > sent+1 {
				t.Errorf("%s moved by %d, want about %d new flows", counterName(rules.CounterIntercepted, c), d, sent)
			}
			if d := after[counterName(rules.CounterBlocked, c)] - before[counterName(rules.CounterBlocked, c)]; d == 0 {
				t.Errorf("%s did not move", counterName(rules.CounterBlocked, c))
			}
			t.Logf("%s: %v", c, per)
		})
	}

	// On the wire: an unconnected socket sees the answer's source address.
	for _, f := range harness.Families {
		t.Run("source-address/"+f.String(), func(t *testing.T) {
			src, m, err := udpFrom(ctx, topo.Client, harness.Public(f), "src-"+f.String()+".example")
			if err != nil {
				t.Fatal(err)
			}
			if want := netip.AddrPortFrom(harness.Public(f), 53); src != want {
				t.Errorf("answer came from %v, want %v", src, want)
			}
			if id := harness.UpstreamFromAnswer(m); id < 1 || id > harness.NumUpstreams {
				t.Errorf("answered by %d, want an upstream", id)
			}
		})
	}

	// A query to an upstream's own address is intercepted like any other:
	// answered (by whichever upstream is next), from the address asked.
	t.Run("to-an-upstream", func(t *testing.T) {
		for _, f := range harness.Families {
			up := topo.Upstreams[1].Addr(f)
			src, m, err := udpFrom(ctx, topo.Client, up, "direct-"+f.String()+".example")
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if src != netip.AddrPortFrom(up, 53) || harness.UpstreamFromAnswer(m) < 1 || harness.UpstreamFromAnswer(m) > harness.NumUpstreams {
				t.Errorf("%s: answer from %v by %d", f, src, harness.UpstreamFromAnswer(m))
			}
		}
	})

	// Not intercepted: the box's own queries (output path, no loop) and
	// sources outside the client networks (forwarded under the policy).
	for _, tc := range []struct{ desc, ns string }{{"box-itself", topo.Box}, {"outsider", topo.Outsider}} {
		for _, c := range combos() {
			t.Run(tc.desc+"/"+c.String(), func(t *testing.T) {
				name := tc.desc + "-" + c.String() + ".example"
				o := harness.Exchange(ctx, tc.ns, harness.Query{Name: name, Proto: c.p, Server: harness.Public(c.f)})
				if o.Upstream != harness.PublicID || publicGot(name) != 1 {
					t.Errorf("want an answer from the public resolver itself, got %s", o)
				}
			})
		}
	}
}

// TestBlockDoT: with --block-dot, TCP connections and UDP packets to port
// 853 from the client networks are dropped and counted, whether they go to
// the box itself or through it; without it, DoT to the box's own address
// is delivered and DoT through the box meets the forward policy (which
// drops everything from the clients but DNAT'd DNS). Sources outside the
// client networks are never affected, and DNS on port 53 still works.
func TestBlockDoT(t *testing.T) {
	ctx := testCtx(t, 4*time.Minute)
	topo := newTopo(t, ctx)
	for _, ns := range []string{topo.Upstream, topo.Box} {
		if err := topo.ListenProbes(ns, rules.DoTPort); err != nil {
			t.Fatal(err)
		}
	}
	cli := cliFor(t, topo)
	probe := func(ns string, p harness.Proto, dst netip.Addr) bool {
		t.Helper()
		to := netip.AddrPortFrom(dst, rules.DoTPort)
		var ok bool
		var err error
		if p == harness.TCP {
			ok, err = topo.ProbeTCP(ctx, ns, to)
		} else {
			ok, err = topo.ProbeUDP(ctx, ns, to)
		}
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	up := func(f harness.Family) netip.Addr { return topo.Upstreams[0].Addr(f) }

	// Off, on, and off again: the re-apply in place removes the rules and
	// their counters.
	for _, dot := range []bool{false, true, false} {
		args := topo.ApplyArgs(standardList(t))
		if dot {
			args = append(args, "--block-dot")
		}
		mustRun(t, ctx, cli, "apply", args...)
		for _, c := range combos() {
			t.Run(fmt.Sprintf("block-dot=%v/%s", dot, c), func(t *testing.T) {
				// Control first: an outsider's DoT goes through the box
				// to the listener, so the listener works.
				if !probe(topo.Outsider, c.p, up(c.f)) {
					t.Fatalf("outsider's port 853 probe did not arrive")
				}
				before := counters(t, ctx, cli)
				toBox := probe(topo.Client, c.p, listen(c.f))
				through := probe(topo.Client, c.p, up(c.f))
				after := counters(t, ctx, cli)
				dotDelta := after[counterName(rules.CounterDoTBlocked, c)] - before[counterName(rules.CounterDoTBlocked, c)]
				fwdDelta := after[rules.CounterForwardDropped] - before[rules.CounterForwardDropped]
				if through {
					t.Errorf("the client's port 853 probe through the box arrived")
				}
				if dot {
					if toBox {
						t.Errorf("the client's port 853 probe to the box arrived")
					}
					// UDP: one datagram each; TCP: each SYN (and
					// its retransmissions).
					if dotDelta < 2 || (c.p == harness.UDP && dotDelta != 2) {
						t.Errorf("%s moved by %d, want 2 (UDP) or at least 2 (TCP)", counterName(rules.CounterDoTBlocked, c), dotDelta)
					}
					if fwdDelta != 0 {
						t.Errorf("forward_dropped moved by %d: port 853 should be dropped before forwarding", fwdDelta)
					}
				} else {
					if !toBox {
						t.Errorf("without --block-dot the client's port 853 probe to the box did not arrive")
					}
					if fwdDelta == 0 {
						t.Errorf("forward_dropped did not move for the port 853 probe through the box")
					}
					if _, ok := after[counterName(rules.CounterDoTBlocked, c)]; ok {
						t.Errorf("dot_blocked counters exist without --block-dot")
					}
				}
				// Port 53 is unaffected: the fallback works.
				expectAnswered(t, topo, query(ctx, topo, harness.Query{Name: "fallback-" + c.String() + ".example", Proto: c.p, Server: listen(c.f)}), c.f)
			})
		}
	}
}
