//go:build linux

package integration

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"nftdns/integration/harness"
)

// The suffix tests (issue 3): every list syntax through the real kernel,
// the EDNS layouts a suffix match has to cope with, and --strict.

// suffixBlocklist mixes every syntax a blocklist line may use.
func suffixBlocklist(t *testing.T) string {
	return writeList(t, "mixed.txt",
		"[Adblock Plus 2.0]",
		"! an adblock comment",
		"# a hash comment",
		"exact.example.net",
		"0.0.0.0 hosts-line.example",
		"*.below.example",
		"||tree.example^",
		"@@||ok.tree.example^",
		"||ads.example^$third-party", // a modifier: skipped, never a name
		"address=/dnsmasq-address.example/0.0.0.0",
		"local=/dnsmasq-local.example/",
		"server=/dnsmasq-server.example/",
		"||googletagmanager.com^",
		"||abcdefghijklm.com^",
		"||Mixed-Case.Example^",
	)
}

func suffixAllowlist(t *testing.T) string {
	return writeList(t, "allow.txt", "good.tree.example", "*.fine.below.example")
}

// suffixZone is an RPZ zone: relative and absolute owners, wildcards,
// passthru, and records that are skipped.
func suffixZone(t *testing.T) string {
	return writeList(t, "feed.rpz",
		"$ORIGIN rpz.local.",
		"$TTL 300",
		"@ IN SOA ns.rpz.local. admin.rpz.local. 1 3600 600 86400 300",
		"@ IN NS ns.rpz.local.",
		"rpz-nx.example CNAME .",
		"*.rpz-wild.example CNAME *.",
		"rpz-wild.example CNAME .",
		"pass.rpz-wild.example CNAME rpz-passthru.",
		"32.1.2.0.192.rpz-ip CNAME .", // an IP trigger: skipped
	)
}

type suffixProbe struct {
	name    string
	blocked bool
	why     string
}

func suffixProbes() []suffixProbe {
	return []suffixProbe{
		{"exact.example.net", true, "exact name"},
		{"sub.exact.example.net", false, "an exact name covers nothing under it"},
		{"hosts-line.example", true, "hosts line"},
		{"a.below.example", true, "*.d: a name under d"},
		{"x.y.below.example", true, "*.d: deeper"},
		{"below.example", false, "*.d: not d itself"},
		{"notbelow.example", false, "label alignment"},
		{"below.example.evil", false, "end anchoring"},
		{"tree.example", true, "||d^: d itself"},
		{"www.tree.example", true, "||d^: under d"},
		{"ok.tree.example", false, "@@||d^ exception"},
		{"a.ok.tree.example", false, "@@||d^ covers under it"},
		{"good.tree.example", false, "allowlist exact"},
		{"a.good.tree.example", true, "allowlist exact covers nothing under it"},
		{"a.fine.below.example", false, "allowlist *.d"},
		{"fine.below.example", true, "allowlist *.d leaves d to the block"},
		{"ads.example", false, "adblock line with a modifier is skipped"},
		{"dnsmasq-address.example", true, "dnsmasq address="},
		{"x.dnsmasq-local.example", true, "dnsmasq local="},
		{"x.dnsmasq-server.example", true, "dnsmasq server="},
		{"googletagmanager.com", true, "suffix apex"},
		{"www.googletagmanager.com", true, "under the suffix"},
		{"x0googletagmanager.com", false, "length byte 16 vs digit 0"},
		{"0googletagmanager.com", false, "length byte 16 vs digit 0, first label"},
		{"x-abcdefghijklm.com", false, "length byte 13 vs hyphen"},
		{"a.abcdefghijklm.com", true, "under a 13-letter label"},
		{"deep.mixed-case.example", true, "entry written in mixed case"},
		{"rpz-nx.example", true, "RPZ CNAME ."},
		{"a.rpz-nx.example", false, "RPZ owner is exact"},
		{"a.rpz-wild.example", true, "RPZ *.d CNAME *."},
		{"pass.rpz-wild.example", false, "RPZ passthru"},
		{"rpz-wild.example", true, "RPZ apex"},
		{"unrelated.example", false, "not listed"},
	}
}

// TestSuffixSyntaxes: what each syntax blocks and does not, through the
// kernel, over UDP and TCP, IPv4 and IPv6, in random letter case; and check
// agrees with every probe.
func TestSuffixSyntaxes(t *testing.T) {
	ctx := testCtx(t, 3*time.Minute)
	topo := newTopo(t, ctx)
	cli := cliFor(t, topo)
	block, allow, zone := suffixBlocklist(t), suffixAllowlist(t), suffixZone(t)
	args := append(topo.ApplyArgs(block, zone), "--allowlist", allow)
	res := mustRun(t, ctx, cli, "apply", args...)
	t.Logf("apply: %s", res.Stdout)
	if !strings.Contains(res.Stdout, "suffix entries") || !strings.Contains(res.Stdout, "folded away") {
		t.Errorf("apply does not report the suffix entries and what was folded away: %q", res.Stdout)
	}

	probes := suffixProbes()
	names := make([]string, len(probes))
	for i, p := range probes {
		names[i] = p.name
	}
	chk, err := cli.Run(ctx, "check", append([]string{"--blocklist", block, "--blocklist", zone, "--allowlist", allow, "--"}, names...)...)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(chk.Stdout), "\n")
	if len(lines) != len(probes) {
		t.Fatalf("check printed %d lines for %d names:\n%s", len(lines), len(probes), chk)
	}
	for i, p := range probes {
		if got := strings.Contains(lines[i], "blocked by"); got != p.blocked {
			t.Errorf("check %s (%s): %q, want blocked=%v", p.name, p.why, lines[i], p.blocked)
		}
	}

	var qs []harness.Query
	var which []suffixProbe
	var cs []combo
	for _, p := range probes {
		for _, c := range combos() {
			to := 5 * time.Second
			if p.blocked {
				to = blockTimeout
			}
			qs = append(qs, harness.Query{Name: p.name, Case: harness.Random, Proto: c.p, Server: listen(c.f), Timeout: to})
			which = append(which, p)
			cs = append(cs, c)
		}
	}
	outs := harness.ExchangeAll(ctx, topo.Client, qs, 32)
	for i, o := range outs {
		t.Run(fmt.Sprintf("%s/%s", which[i].name, cs[i]), func(t *testing.T) {
			if which[i].blocked {
				expectBlocked(t, topo, o)
			} else {
				expectAnswered(t, topo, o, cs[i].f)
			}
			if t.Failed() {
				t.Logf("why: %s", which[i].why)
			}
		})
	}
}

// suffixLayout is how a query carries its EDNS record.
type suffixLayout struct {
	name string
	edit func(m *dns.Msg)
}

func suffixLayouts() []suffixLayout {
	edns := func(opts ...dns.EDNS0) func(m *dns.Msg) {
		return func(m *dns.Msg) {
			m.SetEdns0(1232, false)
			o := m.IsEdns0()
			o.Option = append(o.Option, opts...)
		}
	}
	return []suffixLayout{
		{"no-edns", func(*dns.Msg) {}},
		{"edns", edns()},
		{"client-cookie", edns(&dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"})},
		{"client-server-cookie", edns(&dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "01020304050607081112131415161718191a1b1c1d1e1f20"})},
		{"ecs-v4", edns(&dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 1, SourceNetmask: 24, Address: net.ParseIP("198.51.100.0").To4()})},
		{"ecs-v6", edns(&dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 2, SourceNetmask: 56, Address: net.ParseIP("2001:db8:ab00::")})},
		{"padding", edns(&dns.EDNS0_PADDING{Padding: make([]byte, 37)})},
		{"cookie-ecs-padding", edns(&dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"},
			&dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 1, SourceNetmask: 24, Address: net.ParseIP("198.51.100.0").To4()},
			&dns.EDNS0_PADDING{Padding: make([]byte, 11)})},
		{"extra-record", func(m *dns.Msg) {
			m.SetEdns0(1232, false)
			txt := &dns.TXT{Hdr: dns.RR_Header{Name: "extra.example.", Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 1}, Txt: []string{"x"}}
			m.Extra = append([]dns.RR{txt}, m.Extra...)
		}},
	}
}

// suffixSend sends name with the layout to the listen address and reports
// whether an answer came back.
func suffixSend(ctx context.Context, topo *harness.Topology, c combo, l suffixLayout, name string, id uint16, timeout time.Duration) (bool, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeA)
	m.Id = id
	l.edit(m)
	wire, err := m.Pack()
	if err != nil {
		return false, err
	}
	resp, err := diffRawExchange(ctx, topo.Client, c.p, netip.AddrPortFrom(listen(c.f), 53), wire, timeout)
	return resp != nil, err
}

// TestSuffixLayouts: a name under a suffix entry is blocked, and a name
// next to it answered, whatever the query's EDNS record carries, over UDP
// and TCP, IPv4 and IPv6. Queries with records besides one OPT are counted
// as unusual_layout; with --strict they are dropped, while ordinary
// queries still pass.
func TestSuffixLayouts(t *testing.T) {
	ctx := testCtx(t, 3*time.Minute)
	topo := newTopo(t, ctx)
	cli := cliFor(t, topo)
	list := writeList(t, "layout.txt", "||layout.example^", "*.star-layout.example")

	// Counters count packets: a dropped TCP query is retransmitted and
	// counted again (even after the client gave up), so only UDP gives an
	// exact count, and the UDP runs come first.
	for _, p := range harness.Protos {
		for _, strict := range []bool{false, true} {
			args := topo.ApplyArgs(list)
			if strict {
				args = append(args, "--strict")
			}
			mustRun(t, ctx, cli, "apply", args...)
			before := suffixCounter(t, ctx, cli, "unusual_layout")
			type job struct {
				l       suffixLayout
				c       combo
				name    string
				blocked bool
				id      uint16
				got     bool
				err     error
			}
			var jobs []*job
			unusualSent := 0
			for _, l := range suffixLayouts() {
				for _, c := range combos() {
					if c.p != p {
						continue
					}
					for _, q := range []struct {
						name    string
						blocked bool
					}{
						{"a.LAYOUT.example", true},
						{"x.y.star-layout.Example", true},
						{"layout-ok.example", false},
						{"a.notlayout.example", false},
					} {
						jobs = append(jobs, &job{l: l, c: c, name: q.name, blocked: q.blocked, id: uint16(1000 + len(jobs))})
						if l.name == "extra-record" {
							unusualSent++
						}
					}
					// A zero byte inside a label ends the kernel's scan early: it
					// matches "x", the resolver sees a name under layout.example.
					// Only the layout check catches it: counted always, dropped
					// with --strict.
					jobs = append(jobs, &job{l: l, c: c, name: `x\000y.a.layout.example`, blocked: strict, id: uint16(1000 + len(jobs))})
					unusualSent++
				}
			}
			var wg sync.WaitGroup
			sem := make(chan struct{}, 16)
			for _, j := range jobs {
				wg.Add(1)
				sem <- struct{}{}
				go func() {
					defer func() { <-sem; wg.Done() }()
					to := 5 * time.Second
					if j.blocked || strict && j.l.name == "extra-record" {
						to = blockTimeout
					}
					j.got, j.err = suffixSend(ctx, topo, j.c, j.l, j.name, j.id, to)
				}()
			}
			wg.Wait()
			for _, j := range jobs {
				want := !j.blocked && !(strict && j.l.name == "extra-record")
				if j.got != want {
					t.Errorf("strict=%v %s %s %s: answered=%v, want %v (%v)", strict, j.l.name, j.c, j.name, j.got, want, j.err)
				}
				if j.blocked && !strings.Contains(j.name, `\`) && topo.Log.CountName(j.name) != 0 {
					t.Errorf("%s reached an upstream", j.name)
				}
			}
			got := suffixCounter(t, ctx, cli, "unusual_layout") - before
			if p == harness.UDP && got != uint64(unusualSent) || got < uint64(unusualSent) {
				t.Errorf("strict=%v %s: unusual_layout counted %d packets, sent %d queries", strict, p, got, unusualSent)
			}
			t.Logf("strict=%v %s: %d queries in %d layouts, unusual_layout +%d", strict, p, len(jobs), len(suffixLayouts()), got)
		}
	}
}

func suffixCounter(t *testing.T, ctx context.Context, cli *harness.CLI, name string) uint64 {
	t.Helper()
	res := mustRun(t, ctx, cli, "status", "--json")
	st, err := harness.ParseStatus(res.Stdout)
	if err != nil {
		t.Fatalf("status: %v\n%s", err, res.Stdout)
	}
	v, ok := st.Counters[name]
	if !ok {
		t.Fatalf("status has no counter %s:\n%s", name, res.Stdout)
	}
	return v
}
