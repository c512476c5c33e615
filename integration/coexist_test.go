//go:build linux

package integration

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"nftdns/integration/harness"
)

// coexistPublished is the docker-like table's published port: the box's
// outsider-side address, TCP 8080, DNATed to the upstream namespace's
// probe listener.
var (
	coexistPublished = netip.AddrPortFrom(harness.BoxOut4, 8080)
	coexistBackend   = netip.AddrPortFrom(netip.MustParseAddr("198.18.2.11"), harness.ProbePort)
)

// coexistFirewall is a firewalld-like table: filter chains on prerouting
// (priorities raw and filter), input and forward, all with policy drop.
// With dnsRules it also has the accept rules the README asks of another
// firewall: DNS from the clients to the listen addresses, replies from the
// upstreams, and the forwarded (DNATed) flows to the upstreams. Either way
// it accepts ICMP/ICMPv6 (neighbour discovery) and the docker-like
// published port. No rule has a counter, so `nft list table` is stable.
//
// Note the destinations: a prerouting chain at priority raw runs before
// nftdns's DNAT (dstnat, -100) and sees the listen address; one at
// priority filter, and the forward chain, see the DNATed upstream.
func coexistFirewall(dnsRules bool) string {
	dns := func(lines ...string) string {
		if !dnsRules {
			return ""
		}
		return strings.Join(lines, "\n") + "\n"
	}
	return fmt.Sprintf(`
table inet firewalld {
	chain raw_PREROUTING {
		type filter hook prerouting priority raw; policy drop;
		meta l4proto { icmp, ipv6-icmp } accept
%[1]s		ip saddr %[4]s ip daddr %[5]s tcp dport %[7]d accept
		ip saddr %[6]s ip daddr %[4]s tcp sport %[8]d accept
	}

	chain filter_PREROUTING {
		type filter hook prerouting priority filter; policy drop;
		ct state established,related accept
		meta l4proto { icmp, ipv6-icmp } accept
%[2]s		ip saddr %[4]s ip daddr %[6]s tcp dport %[8]d ct status dnat accept
	}

	chain filter_INPUT {
		type filter hook input priority filter; policy drop;
		ct state established,related accept
		meta l4proto { icmp, ipv6-icmp } accept
	}

	chain filter_FORWARD {
		type filter hook forward priority filter; policy drop;
		ct state established,related accept
%[3]s		ip saddr %[4]s ip daddr %[6]s tcp dport %[8]d accept
	}
}
`,
		dns(
			fmt.Sprintf("\t\tip saddr %s ip daddr %s meta l4proto { tcp, udp } th dport 53 accept", harness.ClientNet4, harness.Listen4),
			fmt.Sprintf("\t\tip6 saddr %s ip6 daddr %s meta l4proto { tcp, udp } th dport 53 accept", harness.ClientNet6, harness.Listen6),
			fmt.Sprintf("\t\tip saddr %s ip daddr %s meta l4proto { tcp, udp } th sport 53 accept", harness.UpstreamNet4, harness.BoxUp4),
			fmt.Sprintf("\t\tip6 saddr %s ip6 daddr %s meta l4proto { tcp, udp } th sport 53 accept", harness.UpstreamNet6, harness.BoxUp6),
		),
		dns(
			fmt.Sprintf("\t\tip saddr %s ip daddr %s meta l4proto { tcp, udp } th dport 53 ct status dnat accept", harness.ClientNet4, harness.UpstreamNet4),
			fmt.Sprintf("\t\tip6 saddr %s ip6 daddr %s meta l4proto { tcp, udp } th dport 53 ct status dnat accept", harness.ClientNet6, harness.UpstreamNet6),
		),
		dns(
			fmt.Sprintf("\t\tip saddr %s ip daddr %s meta l4proto { tcp, udp } th dport 53 accept", harness.ClientNet4, harness.UpstreamNet4),
			fmt.Sprintf("\t\tip6 saddr %s ip6 daddr %s meta l4proto { tcp, udp } th dport 53 accept", harness.ClientNet6, harness.UpstreamNet6),
		),
		harness.OutsideNet4, coexistPublished.Addr(), coexistBackend.Addr(), coexistPublished.Port(), coexistBackend.Port(),
	)
}

// coexistDocker is a docker-like NAT table hooking the same points as
// nftdns's nat chains, at the same priorities: a DNAT for a published TCP
// port and a masquerade for a container network.
func coexistDocker() string {
	return fmt.Sprintf(`
table ip docker-nat {
	chain PREROUTING {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr %s tcp dport %d dnat to %s
	}

	chain POSTROUTING {
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr 198.18.4.0/24 oifname != "docker0" masquerade
	}
}
`, coexistPublished.Addr(), coexistPublished.Port(), coexistBackend)
}

// coexistTables are the foreign tables, as `nft list table` arguments.
var coexistTables = [][2]string{{"inet", "firewalld"}, {"ip", "docker-nat"}}

// coexistSnapshot lists the foreign tables.
func coexistSnapshot(t *testing.T, ctx context.Context, ns string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, tb := range coexistTables {
		res, err := harness.Nft(ctx, ns, "list", "table", tb[0], tb[1])
		if err != nil || res.Code != 0 {
			t.Fatalf("list table %s %s: %v\n%s", tb[0], tb[1], err, res)
		}
		out[tb[0]+" "+tb[1]] = res.Stdout
	}
	return out
}

// coexistSame fails the test if a foreign table differs from the snapshot.
func coexistSame(t *testing.T, ctx context.Context, ns, stage string, want map[string]string) {
	t.Helper()
	got := coexistSnapshot(t, ctx, ns)
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%s: table %s changed\nbefore:\n%s\nafter:\n%s", stage, k, w, got[k])
		}
	}
}

// coexistDNS checks every family/transport pair: the blocked names are
// dropped and do not reach an upstream (during this stage: an earlier stage
// may have allowed them), the allowed one is answered.
func coexistDNS(t *testing.T, ctx context.Context, topo *harness.Topology, stage string, blocked []string, allowed string) {
	t.Helper()
	seen := map[string]int{}
	var qs []harness.Query
	for _, n := range blocked {
		seen[n] = topo.Log.CountName(n)
	}
	for _, c := range combos() {
		for _, n := range blocked {
			qs = append(qs, harness.Query{Name: n, Case: harness.Random, Proto: c.p, Server: listen(c.f), Timeout: blockTimeout})
		}
		qs = append(qs, harness.Query{Name: allowed, Proto: c.p, Server: listen(c.f)})
	}
	for _, o := range harness.ExchangeAll(ctx, topo.Client, qs, 32) {
		if o.Query.Name == allowed {
			f := harness.V4
			if o.Query.Server.Is6() {
				f = harness.V6
			}
			expectAnswered(t, topo, o, f)
		} else if o.Answered() {
			t.Errorf("%s: want no answer (blocked), got %s", stage, o)
		}
	}
	for _, n := range blocked {
		if d := topo.Log.CountName(n) - seen[n]; d != 0 {
			t.Errorf("%s: blocked name %s reached the upstreams %d time(s)", stage, n, d)
		}
	}
}

// coexistPublishedWorks checks the docker-like DNAT still carries a TCP
// connection from the outsider to the backend.
func coexistPublishedWorks(t *testing.T, ctx context.Context, topo *harness.Topology, stage string) {
	t.Helper()
	ok, err := topo.ProbeTCP(ctx, topo.Outsider, coexistPublished)
	if err != nil {
		t.Fatal(err)
	}
	if !ok {
		t.Errorf("%s: the docker-like published port %s no longer reaches %s", stage, coexistPublished, coexistBackend)
	}
}

// TestCoexist: with a firewalld-like table (policy drop on prerouting at
// raw and filter priority, input and forward, plus the accept rules the
// README asks for) and a docker-like NAT table hooking the same points,
// nftdns's apply, re-apply, rollback and flush never change either table
// (byte-identical `nft list table`), DNS filtering works (blocked dropped,
// allowed answered, every family and transport) and the docker-like DNAT
// keeps working.
func TestCoexist(t *testing.T) {
	ctx := testCtx(t, 2*time.Minute)
	topo := newTopo(t, ctx)
	cli := cliFor(t, topo)
	if err := harness.NftScript(ctx, topo.Box, coexistFirewall(true)+coexistDocker()); err != nil {
		t.Fatalf("load foreign tables: %v", err)
	}
	snap := coexistSnapshot(t, ctx, topo.Box)
	coexistPublishedWorks(t, ctx, topo, "before nftdns")

	listA := writeList(t, "a.list", blockedName, "list-a-only.example")
	listB := writeList(t, "b.list", blockedName, "list-b-only.example")

	apply(t, ctx, topo, cli, listA)
	coexistSame(t, ctx, topo.Box, "apply", snap)
	coexistDNS(t, ctx, topo, "apply", []string{blockedName, "list-a-only.example"}, "list-b-only.example")
	coexistPublishedWorks(t, ctx, topo, "apply")

	apply(t, ctx, topo, cli, listB)
	coexistSame(t, ctx, topo.Box, "re-apply", snap)
	coexistDNS(t, ctx, topo, "re-apply", []string{blockedName, "list-b-only.example"}, "list-a-only.example")

	mustRun(t, ctx, cli, "rollback")
	coexistSame(t, ctx, topo.Box, "rollback", snap)
	coexistDNS(t, ctx, topo, "rollback", []string{blockedName, "list-a-only.example"}, "list-b-only.example")

	mustRun(t, ctx, cli, "flush")
	coexistSame(t, ctx, topo.Box, "flush", snap)
	doc, err := harness.ListRulesetJSON(ctx, topo.Box)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := harness.Tables(doc), []string{"inet firewalld", "ip docker-nat"}; !slices.Equal(got, want) {
		t.Errorf("after flush the box has tables %v, want %v", got, want)
	}
	coexistPublishedWorks(t, ctx, topo, "flush")

	// A fresh apply next to the foreign tables (the table is created,
	// not updated in place).
	apply(t, ctx, topo, cli, listB)
	coexistSame(t, ctx, topo.Box, "apply after flush", snap)
	coexistDNS(t, ctx, topo, "apply-after-flush", []string{blockedName, "list-b-only.example"}, "list-a-only.example")
	coexistPublishedWorks(t, ctx, topo, "apply after flush")
}

// TestCoexistForeignDropWins documents the contract from the other side: a
// drop in another table still drops. With the firewalld-like table but
// without its DNS accept rules, an allowed name is not answered and never
// reaches an upstream, although nftdns accepts and DNATs it; the foreign
// table is left as it was.
func TestCoexistForeignDropWins(t *testing.T) {
	ctx := testCtx(t, 2*time.Minute)
	topo := newTopo(t, ctx)
	cli := cliFor(t, topo)
	if err := harness.NftScript(ctx, topo.Box, coexistFirewall(false)); err != nil {
		t.Fatalf("load foreign table: %v", err)
	}
	before, err := harness.Nft(ctx, topo.Box, "list", "table", "inet", "firewalld")
	if err != nil || before.Code != 0 {
		t.Fatalf("list firewalld: %v\n%s", err, before)
	}
	apply(t, ctx, topo, cli, standardList(t))

	var qs []harness.Query
	for _, c := range combos() {
		qs = append(qs,
			harness.Query{Name: allowedName, Proto: c.p, Server: listen(c.f), Timeout: blockTimeout},
			harness.Query{Name: blockedName, Proto: c.p, Server: listen(c.f), Timeout: blockTimeout})
	}
	for _, o := range harness.ExchangeAll(ctx, topo.Client, qs, 16) {
		if o.Answered() {
			t.Errorf("foreign policy drop should win, but: %s", o)
		}
	}
	if n := topo.Log.CountName(allowedName); n != 0 {
		t.Errorf("the allowed name reached the upstreams %d times through a foreign drop policy", n)
	}
	after, err := harness.Nft(ctx, topo.Box, "list", "table", "inet", "firewalld")
	if err != nil || after.Code != 0 {
		t.Fatalf("list firewalld: %v\n%s", err, after)
	}
	if after.Stdout != before.Stdout {
		t.Errorf("firewalld table changed by apply\nbefore:\n%s\nafter:\n%s", before.Stdout, after.Stdout)
	}
}
