//go:build linux

package nft

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	"nftdns/rules"
)

// TestDiffSets: element changes of every set kind, and the cases that
// cannot be sent as element changes.
func TestDiffSets(t *testing.T) {
	t.Parallel()
	k := func(s string) []byte { return []byte(s) }
	set := func(interval bool, els ...rules.Element) *rules.Set {
		return &rules.Set{Name: "s", KeyLen: 1, Interval: interval, Elements: els}
	}
	v := func(kind rules.VerdictKind, chain string) *rules.Verdict {
		return &rules.Verdict{Kind: kind, Chain: chain}
	}
	tests := []struct {
		name     string
		a, b     *rules.Set
		del, add string // keys, in order
		why      string // "" = element changes
	}{
		{"same", set(false, rules.Element{Key: k("a")}), set(false, rules.Element{Key: k("a")}), "", "", ""},
		{"add and delete", set(false, rules.Element{Key: k("a")}, rules.Element{Key: k("c")}),
			set(false, rules.Element{Key: k("b")}, rules.Element{Key: k("c")}), "a", "b", ""},
		{"unsorted input", set(false, rules.Element{Key: k("c")}, rules.Element{Key: k("a")}),
			set(false, rules.Element{Key: k("d")}, rules.Element{Key: k("c")}), "a", "d", ""},
		{"map data changes", set(false, rules.Element{Key: k("a"), Data: k("1")}, rules.Element{Key: k("b"), Data: k("2")}),
			set(false, rules.Element{Key: k("a"), Data: k("9")}, rules.Element{Key: k("b"), Data: k("2")}), "a", "a", ""},
		{"verdict changes", set(false, rules.Element{Key: k("a"), Verdict: v(rules.Goto, "x")}),
			set(false, rules.Element{Key: k("a"), Verdict: v(rules.Goto, "y")}), "a", "a", ""},
		{"empty to some", set(false), set(false, rules.Element{Key: k("a")}), "", "a", ""},
		{"duplicate key", set(false, rules.Element{Key: k("a")}, rules.Element{Key: k("a")}), set(false), "", "", "twice"},
		{"interval end changed", set(true, rules.Element{Key: k("a"), KeyEnd: k("b")}), set(true, rules.Element{Key: k("a"), KeyEnd: k("c")}), "a", "a", ""},
		{"interval added", set(true, rules.Element{Key: k("a"), KeyEnd: k("b")}), set(true, rules.Element{Key: k("a"), KeyEnd: k("b")}, rules.Element{Key: k("x"), KeyEnd: k("y")}), "", "x", ""},
		{"interval same", set(true, rules.Element{Key: k("a"), KeyEnd: k("b")}), set(true, rules.Element{Key: k("a"), KeyEnd: k("b")}), "", "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d, why := diffSets(tc.a, tc.b)
			if tc.why != "" {
				if !strings.Contains(why, tc.why) {
					t.Errorf("why = %q, want %q", why, tc.why)
				}
				return
			}
			if why != "" {
				t.Fatalf("why = %q", why)
			}
			var del, add []string
			for _, x := range d.del {
				del = append(del, string(x.Key))
			}
			for _, e := range d.add {
				add = append(add, string(e.Key))
			}
			if strings.Join(del, "") != tc.del || strings.Join(add, "") != tc.add {
				t.Errorf("del %q add %q, want %q %q", del, add, tc.del, tc.add)
			}
		})
	}
}

// TestStructureDiff: anything but elements makes a full apply.
func TestStructureDiff(t *testing.T) {
	t.Parallel()
	base := testRuleset("t", 10)
	tests := []struct {
		name   string
		change func(rs *rules.Ruleset)
		want   string
	}{
		{"elements only", func(rs *rules.Ruleset) { rs.Set("names13").Elements = rs.Set("names13").Elements[1:] }, ""},
		{"rule text", func(rs *rules.Ruleset) { rs.Chains[1].Rules[0].Text += " " }, "rule 0"},
		{"rule expression", func(rs *rules.Ruleset) {
			r := &rs.Chains[1].Rules[0]
			r.Exprs = append(slices.Clone(r.Exprs[:len(r.Exprs)-1]), rules.Verdict{Kind: rules.Accept})
		}, "rule 0"},
		{"set comment", func(rs *rules.Ruleset) { rs.Set("big").Comment = "other" }, `set "big"`},
		{"set added", func(rs *rules.Ruleset) { rs.Sets = append(rs.Sets, &rules.Set{Name: "x", KeyLen: 4}) }, "sets instead of"},
		{"counters", func(rs *rules.Ruleset) { rs.Counters = rs.Counters[1:] }, "counters"},
		{"chain priority", func(rs *rules.Ruleset) { rs.Chains[len(rs.Chains)-1].Priority++ }, "chain"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rs := testRuleset("t", 10)
			tc.change(rs)
			got := StructureDiff(base, rs)
			if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
				t.Errorf("StructureDiff = %q, want %q", got, tc.want)
			}
		})
	}
}

// TestFakeApplyOver: against the fake kernel, an element change of every
// set kind is one batch of SETELEM messages that leaves the kernel holding
// exactly the new ruleset's elements; a kernel whose elements differ from
// the base refuses it and a full apply follows.
func TestFakeApplyOver(t *testing.T) {
	t.Parallel()
	k := newFakeKernel()
	c := k.conn()
	ctx := context.Background()
	rs1 := testRuleset("t", 3000)
	st, err := c.ApplyOver(ctx, rs1, nil, nil)
	if err != nil || st.Incremental {
		t.Fatalf("first ApplyOver = %+v, %v", st, err)
	}
	h0 := k.handles("t")

	rs2 := testRuleset("t", 3000)
	rs2.Set("big").Elements = append(bigKeys(3100)[100:], rules.Element{Key: wireName("new.example", 64)})
	rs2.Set("upstreams4").Elements[0].Data = addrPort(addr4("198.51.100.99"), 53)
	vm := rs2.Set("verdicts").Elements
	vm[0].Verdict = &rules.Verdict{Kind: rules.Jump, Chain: "deeper"}
	st, err = c.ApplyOver(ctx, rs2, &Base{Ruleset: rs1, ApplyID: st.ApplyID}, nil)
	if err != nil || !st.Incremental || st.Added != 103 || st.Removed != 102 {
		t.Fatalf("ApplyOver = %+v, %v; want incremental +103 -102", st, err)
	}
	for _, op := range batchOps(k.lastBatch()) {
		if !strings.Contains(op, "SETELEM ") {
			t.Errorf("incremental batch holds %s", op)
		}
	}
	if h := k.handles("t"); !maps.Equal(h, h0) {
		t.Errorf("handles changed")
	}
	for _, s := range rs2.Sets {
		want, _ := wantElems(s)
		got := k.elemsOf("t", s.Name)
		if len(got) != len(want) {
			t.Errorf("set %s holds %d elements, want %d", s.Name, len(got), len(want))
		}
		if s.DataType != rules.TypeVerdict {
			for id, v := range want {
				if gv, ok := got[id]; !ok || strings.TrimPrefix(gv, "\x00") != v {
					t.Errorf("set %s: element %x is %q, want %q", s.Name, id, gv, v)
				}
			}
		}
	}
	base := &Base{Ruleset: rs2, ApplyID: st.ApplyID}

	// Someone removed an element the next diff deletes: refused, full.
	k.mu.Lock()
	for id := range k.tables["t"].sets["big"].elems {
		if strings.HasPrefix(id, string(wireName("new.example", 64))) {
			delete(k.tables["t"].sets["big"].elems, id)
		}
	}
	k.mu.Unlock()
	rs3 := testRuleset("t", 3000)
	st, err = c.ApplyOver(ctx, rs3, base, nil)
	if err != nil || st.Incremental || !strings.Contains(st.Fallback, "refused") {
		t.Fatalf("ApplyOver = %+v, %v; want a full apply after a refusal", st, err)
	}
	if got := len(k.elemsOf("t", "big")); got != 3000 {
		t.Errorf("big holds %d elements after the full apply, want 3000", got)
	}
}

// leafRuleset is testRuleset with leaf chains: chains only verdict map
// elements reach, one element of "verdicts" each. rules gives each chain's
// one verdict.
func leafRuleset(table string, leaves map[string]rules.VerdictKind) *rules.Ruleset {
	rs := testRuleset(table, 10)
	vm := rs.Set("verdicts")
	names := slices.Sorted(maps.Keys(leaves))
	for _, name := range names {
		rs.Chains = slices.Insert(rs.Chains, 0, &rules.Chain{Name: name, Comment: "a leaf",
			Rules: []rules.Rule{{Text: "verdict", Exprs: []rules.Expr{rules.Verdict{Kind: leaves[name]}}}}})
		vm.Elements = append(vm.Elements, rules.Element{Key: []byte(fmt.Sprintf("%-13s", name)), Verdict: &rules.Verdict{Kind: rules.Goto, Chain: name}})
	}
	slices.SortFunc(vm.Elements, func(a, b rules.Element) int { return bytes.Compare(a.Key, b.Key) })
	return rs
}

// TestFakeApplyOverLeafChains: chains that only verdict map elements reach
// may come, go and change their rules in an incremental apply: new chains
// and rules first, then the elements, then the chains that went; other
// chains keep their handles.
func TestFakeApplyOverLeafChains(t *testing.T) {
	t.Parallel()
	k := newFakeKernel()
	c := k.conn()
	ctx := context.Background()
	rs1 := leafRuleset("t", map[string]rules.VerdictKind{"leaf-a": rules.Accept, "leaf-b": rules.Accept})
	st, err := c.ApplyOver(ctx, rs1, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	h0 := k.handles("t")
	rs2 := leafRuleset("t", map[string]rules.VerdictKind{"leaf-b": rules.Drop, "leaf-c": rules.Accept})
	if why := StructureDiff(rs1, rs2); why != "" {
		t.Fatalf("StructureDiff = %q, want leaf chain changes to be incremental", why)
	}
	st, err = c.ApplyOver(ctx, rs2, &Base{Ruleset: rs1, ApplyID: st.ApplyID}, nil)
	if err != nil || !st.Incremental || st.Added != 1 || st.Removed != 1 {
		t.Fatalf("ApplyOver = %+v, %v; want incremental +1 -1", st, err)
	}
	ops := batchOps(k.lastBatch())
	want := []string{
		"NEWCHAIN leaf-c", "DELRULE leaf-b", "NEWRULE leaf-c", "NEWRULE leaf-b",
		"DELSETELEM verdicts", "NEWSETELEM verdicts", "DELRULE leaf-a", "DELCHAIN leaf-a",
	}
	if !slices.Equal(ops, want) {
		t.Errorf("batch:\n%s\nwant:\n%s", strings.Join(ops, "\n"), strings.Join(want, "\n"))
	}
	h := k.handles("t")
	if _, ok := h["chain leaf-a"]; ok {
		t.Error("leaf-a is still there")
	}
	if _, ok := h["chain leaf-c"]; !ok {
		t.Error("leaf-c was not created")
	}
	for name, v := range h0 {
		if name != "chain leaf-a" && h[name] != v {
			t.Errorf("%s has handle %d, was %d", name, h[name], v)
		}
	}
	if got := len(k.tables["t"].chains["leaf-b"].rules); got != 1 {
		t.Errorf("leaf-b holds %d rules, want 1", got)
	}

	// A leaf chain that a rule now jumps to is structural: full apply.
	rs3 := leafRuleset("t", map[string]rules.VerdictKind{"leaf-b": rules.Drop, "leaf-c": rules.Accept})
	ch := rs3.Chains[len(rs3.Chains)-1]
	ch.Rules = append([]rules.Rule{{Text: "jump leaf-c", Exprs: []rules.Expr{rules.Verdict{Kind: rules.Jump, Chain: "leaf-c"}}}}, ch.Rules...)
	if why := StructureDiff(rs2, rs3); why == "" {
		t.Error("a chain that a rule jumps to changed, and StructureDiff says nothing")
	}
}
