//go:build linux

package nft

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"nftdns/rules"
)

// compileNames compiles the real nftdns ruleset for names, with the
// namespace's own loopback address as listen address and client.
func compileNames(t *testing.T, table string, names []string) *rules.Ruleset {
	t.Helper()
	return compileClients(t, table, names, "198.18.0.0/24")
}

// compileClients is compileNames with other client networks.
func compileClients(t *testing.T, table string, names []string, clients ...string) *rules.Ruleset {
	t.Helper()
	var cl []netip.Prefix
	for _, c := range clients {
		cl = append(cl, netip.MustParsePrefix(c))
	}
	l := &rules.List{Path: "test", Names: map[string]int{}}
	for i, n := range names {
		l.Names[n] = i + 1
	}
	rs, err := rules.Compile(rules.Settings{
		Table:     table,
		Listen:    []netip.Addr{netip.MustParseAddr("198.18.0.1")},
		Upstreams: []netip.AddrPort{netip.MustParseAddrPort("198.18.0.53:53")},
		Clients:   cl,
	}, []*rules.List{l})
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

// testNames are n names of one wire length (one name set, same rules).
// loopbackNS is a test namespace with 198.18.0.1 on its loopback, a
// connection to it and a context.
func loopbackNS(t *testing.T) (string, *Conn, context.Context) {
	t.Helper()
	ns := newTestNS(t)
	c := openNS(t, ns)
	setupLoopback(t, ns, "198.18.0.1/32")
	return ns, c, ctxT(t)
}

func testNames(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("n%06d.example", i)
	}
	return out
}

func blockedCount(t *testing.T, c *Conn, table string) uint64 {
	t.Helper()
	cs, err := c.Counters(ctxT(t), table)
	if err != nil {
		t.Fatal(err)
	}
	return cs[rules.CounterName(rules.CounterBlocked, "ipv4", "udp")].Packets
}

// TestNSApplyOverIncremental: a one-name change is sent as element changes
// only (table, chain and set handles stay), the new name is blocked and the
// removed one passes; then the cases that must fall back to a full apply.
func TestNSApplyOverIncremental(t *testing.T) {
	ns, c, ctx := loopbackNS(t)
	const table = "nfttest"
	nameSet := fmt.Sprintf("name-%d", rules.WireLen(testNames(1)[0]))

	names := testNames(3000)
	rs1 := compileNames(t, table, names)
	st, err := c.ApplyOver(ctx, rs1, nil, nil)
	if err != nil || st.Incremental || st.Fallback == "" || len(st.ApplyID) == 0 {
		t.Fatalf("first ApplyOver = %+v, %v; want a full apply with an apply id", st, err)
	}
	base := &Base{Ruleset: rs1, ApplyID: st.ApplyID}
	handles := nftHandles(t, ns, table)

	// Remove the first name, add a new one of the same length.
	removed, added := names[0], "x999999.example"
	names2 := append([]string{added}, names[1:]...)
	rs2 := compileNames(t, table, names2)
	if why := StructureDiff(rs1, rs2); why != "" {
		t.Fatalf("same-length change is structural: %s", why)
	}
	var p *plan
	c.onPlan = func(pl *plan) { p = pl }
	st, err = c.ApplyOver(ctx, rs2, base, []byte("unused!!"))
	c.onPlan = nil
	if err != nil {
		t.Fatal(err)
	}
	if !st.Incremental || st.Added != 1 || st.Removed != 1 || string(st.ApplyID) != string(base.ApplyID) {
		t.Fatalf("ApplyOver = %+v; want incremental +1 -1 keeping the apply id", st)
	}
	for _, m := range p.msgs {
		if !strings.Contains(m.desc, "element") {
			t.Errorf("incremental batch holds %q", m.desc)
		}
	}
	if got := nftHandles(t, ns, table); !maps.Equal(got, handles) {
		t.Errorf("incremental apply changed handles:\n%v\nwere:\n%v", got, handles)
	}
	if n := nftJSONElements(t, ns, table)[nameSet]; n != len(names2) {
		t.Errorf("name-16 holds %d elements, want %d", n, len(names2))
	}
	b0 := blockedCount(t, c, table)
	sendQuery(t, ns, added)
	if b := blockedCount(t, c, table); b != b0+1 {
		t.Errorf("added name: blocked counter %d -> %d, want +1", b0, b)
	}
	sendQuery(t, ns, removed)
	sendQuery(t, ns, names[1]) // still listed
	if b := blockedCount(t, c, table); b != b0+2 {
		t.Errorf("removed name still blocked, or kept name not: blocked counter %d -> %d, want +2", b0, b)
	}
	base = &Base{Ruleset: rs2, ApplyID: st.ApplyID}

	// The same ruleset again: nothing to send.
	if st, err = c.ApplyOver(ctx, rs2, base, nil); err != nil || !st.Incremental || st.Messages != 0 {
		t.Fatalf("no-op ApplyOver = %+v, %v", st, err)
	}

	t.Run("kernel-elements-differ", func(t *testing.T) {
		// Someone deleted the element the next diff deletes: the batch is
		// refused whole and a full apply takes over.
		rs3 := compileNames(t, table, names2[1:]) // drops "added"
		nftIn(t, ns, "flush", "set", "inet", table, nameSet)
		st, err := c.ApplyOver(ctx, rs3, base, nil)
		if err != nil || st.Incremental || !strings.Contains(st.Fallback, "refused") {
			t.Fatalf("ApplyOver = %+v, %v; want a full apply after a refusal", st, err)
		}
		if n := nftJSONElements(t, ns, table)[nameSet]; n != len(names2)-1 {
			t.Errorf("name-16 holds %d elements, want %d", n, len(names2)-1)
		}
		base = &Base{Ruleset: rs3, ApplyID: st.ApplyID}
	})
	t.Run("structure-changed", func(t *testing.T) {
		rs4 := compileNames(t, table, append(names[:10:10], "a-new-length.example"))
		st, err := c.ApplyOver(ctx, rs4, base, nil)
		if err != nil || st.Incremental || st.Fallback == "" {
			t.Fatalf("ApplyOver = %+v, %v; want a full apply", st, err)
		}
		base = &Base{Ruleset: rs4, ApplyID: st.ApplyID}
	})
	t.Run("interval-ranges", func(t *testing.T) {
		// Client networks are ranges in an interval set: a change is an
		// element change too, and takes effect.
		names := append(names[:10:10], "a-new-length.example")
		outsider := func() uint64 {
			cs, err := c.Counters(ctx, table)
			if err != nil {
				t.Fatal(err)
			}
			return cs[rules.CounterOutsider].Packets
		}
		for i, clients := range [][]string{
			{"198.18.0.0/24", "203.0.113.0/24"},
			{"203.0.113.0/25", "192.0.2.0/24"},
		} {
			rs := compileClients(t, table, names, clients...)
			st, err := c.ApplyOver(ctx, rs, base, nil)
			if err != nil || !st.Incremental {
				t.Fatalf("clients %v: ApplyOver = %+v, %v; want incremental", clients, st, err)
			}
			base = &Base{Ruleset: rs, ApplyID: st.ApplyID}
			got := nftIn(t, ns, "list", "set", "inet", table, "clients4")
			for _, cl := range clients {
				if !strings.Contains(got, cl) {
					t.Errorf("clients4 lacks %s:\n%s", cl, got)
				}
			}
			o := outsider()
			sendQuery(t, ns, "some.example") // from 198.18.0.1
			if wantOut := i == 1; (outsider() == o+1) != wantOut {
				t.Errorf("clients %v: query from 198.18.0.1 counted as outsider: %v, want %v", clients, outsider() == o+1, wantOut)
			}
		}
	})
	t.Run("other-apply-id", func(t *testing.T) {
		rs5 := compileNames(t, table, append(names[:10:10], "a-new-length.example", "x888888.example"))
		st, err := c.ApplyOver(ctx, rs5, &Base{Ruleset: base.Ruleset, ApplyID: []byte("stale-id")}, nil)
		if err != nil || st.Incremental || !strings.Contains(st.Fallback, "apply id") {
			t.Fatalf("ApplyOver = %+v, %v; want a full apply", st, err)
		}
	})
}

// TestNSApplyOverFoldTwinChains: names that need a chain of their own
// (fold-ambiguous ones, told apart from their twins by a verify chain)
// come and go in an incremental apply: the new name's chain is created,
// the old one's deleted, and both take effect.
func TestNSApplyOverFoldTwinChains(t *testing.T) {
	ns, c, ctx := loopbackNS(t)
	const table = "nfttest"
	// Fold-ambiguous names (rules' foldTwinPairs found them): each has a
	// twin, another ordinary name with the same folded bytes. gone and
	// added have the same length, so no set comes or goes.
	gone, kept, added := "3_14_19z07679399._.2873a-8769720a5a9a2274aa-4__12a0-0a2190340721_50",
		"30.z50_221904a87-z64_-07956-92aaz-0578zza24a25a2609",
		"4.39z-z3148312_82a00_8726-_26a1a5--4832710-6_45.-6-a62_-0a4-53a3.3-"
	rs1 := compileNames(t, table, append(testNames(300), gone, kept))
	st, err := c.ApplyOver(ctx, rs1, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	rs2 := compileNames(t, table, append(testNames(300), kept, added))
	ambChains := func(rs *rules.Ruleset) []string {
		var out []string
		for _, ch := range rs.Chains {
			if strings.HasPrefix(ch.Name, "amb-") && strings.Count(ch.Name, "-") == 2 {
				out = append(out, ch.Name)
			}
		}
		return out
	}
	if len(ambChains(rs1)) != 2 || len(ambChains(rs2)) != 2 {
		t.Fatalf("verify chains %v and %v: the names are no longer fold-ambiguous", ambChains(rs1), ambChains(rs2))
	}
	st, err = c.ApplyOver(ctx, rs2, &Base{Ruleset: rs1, ApplyID: st.ApplyID}, nil)
	if err != nil || !st.Incremental {
		t.Fatalf("ApplyOver = %+v, %v; want incremental", st, err)
	}
	listing := nftIn(t, ns, "-t", "list", "table", "inet", table)
	for _, ch := range ambChains(rs2) {
		if !strings.Contains(listing, "chain "+ch+" {") {
			t.Errorf("chain %s missing", ch)
		}
	}
	for _, ch := range ambChains(rs1) {
		if !slices.Contains(ambChains(rs2), ch) && strings.Contains(listing, "chain "+ch+" {") {
			t.Errorf("chain %s still there", ch)
		}
	}
	b0 := blockedCount(t, c, table)
	sendQuery(t, ns, added)
	sendQuery(t, ns, kept)
	if b := blockedCount(t, c, table); b != b0+2 {
		t.Errorf("added and kept names: blocked counter %d -> %d, want +2", b0, b)
	}
	sendQuery(t, ns, gone)
	if b := blockedCount(t, c, table); b != b0+2 {
		t.Errorf("removed name still blocked: blocked counter %d -> %d", b0, b)
	}
}
