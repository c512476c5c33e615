//go:build linux

package nft

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"nftdns/rules"
)

// opsOf returns the names of the ops of kind ("DELSET", ...) in ops.
func opsOf(ops []string, kind string) []string {
	var out []string
	for _, op := range ops {
		if k, name, _ := strings.Cut(op, " "); k == kind {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

func applyFake(t *testing.T, c *Conn, rs *rules.Ruleset) *ApplyStats {
	t.Helper()
	st, err := c.Apply(context.Background(), rs)
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	return st
}

func TestFakeReapplyIdenticalInPlace(t *testing.T) {
	t.Parallel()
	k := newFakeKernel()
	c := k.conn()
	rs := testRuleset("t", 6000)
	if st := applyFake(t, c, rs); st.InPlace {
		t.Error("first Apply reports InPlace")
	}
	before := k.handles("t")
	k.count("t", "blocked", 5, 500)

	st := applyFake(t, c, rs)
	if !st.InPlace {
		t.Error("re-Apply does not report InPlace")
	}
	ops := batchOps(k.lastBatch())
	for _, kind := range []string{"DELTABLE", "DELCHAIN", "DELOBJ", "NEWCHAIN", "NEWOBJ"} {
		if got := opsOf(ops, kind); len(got) > 0 {
			t.Errorf("identical re-apply sends %s %v", kind, got)
		}
	}
	// A set too big to diff is created again rather than flushed.
	for _, kind := range []string{"DELSET", "NEWSET"} {
		if got := opsOf(ops, kind); !slices.Equal(got, []string{"big"}) {
			t.Errorf("identical re-apply sends %s %v, want [big]", kind, got)
		}
	}
	var chains, sets []string
	for _, ch := range rs.Chains {
		chains = append(chains, ch.Name)
	}
	for _, s := range rs.Sets {
		sets = append(sets, s.Name)
	}
	slices.Sort(chains)
	slices.Sort(sets)
	if got := opsOf(ops, "DELRULE"); !slices.Equal(got, chains) {
		t.Errorf("flushed chains %v, want %v", got, chains)
	}
	// Only the big sets and the verdict maps are refilled (the small
	// ones flushed first); the small ones, unchanged, are not touched at
	// all.
	var refilled []string
	for _, s := range rs.Sets {
		if !diffable(s) {
			refilled = append(refilled, s.Name)
		}
	}
	slices.Sort(refilled)
	if !slices.Equal(refilled, []string{"big", "verdicts"}) {
		t.Fatalf("fixture: big sets and verdict maps are %v", refilled)
	}
	if got := opsOf(ops, "DELSETELEM"); !slices.Equal(got, []string{"verdicts"}) {
		t.Errorf("flushed sets %v, want [verdicts] (of %v)", got, sets)
	}
	if got := slices.Compact(opsOf(ops, "NEWSETELEM")); !slices.Equal(got, refilled) {
		t.Errorf("elements sent for sets %v, want %v", got, refilled)
	}
	after := k.handles("t")
	if after["set big"] == before["set big"] {
		t.Error("set big kept its handle: not created again")
	}
	delete(after, "set big")
	delete(before, "set big")
	if !maps.Equal(after, before) {
		t.Errorf("handles changed:\n%v\nwere:\n%v", after, before)
	}
	for _, s := range rs.Sets {
		want := len(s.Elements)
		if s.Interval {
			want *= 2
		}
		if got := k.setSize("t", s.Name); got != want {
			t.Errorf("set %s holds %d elements, want %d", s.Name, got, want)
		}
	}
	ctrs, err := c.Counters(context.Background(), "t")
	if err != nil {
		t.Fatal(err)
	}
	if ctrs["blocked"] != (CounterValue{Packets: 5, Bytes: 500}) {
		t.Errorf("counter blocked = %+v after re-apply, want 5 packets, 500 bytes", ctrs["blocked"])
	}
}

// TestFakeInPlaceOrder checks the order of an in-place batch: rules go
// before what they reference, sets before the chains their elements jump
// to, and the last rule carries the apply id.
func TestFakeInPlaceOrder(t *testing.T) {
	t.Parallel()
	k := newFakeKernel()
	c := k.conn()
	applyFake(t, c, testRuleset("t", 10))
	rs := changedRuleset("t", 10)
	rs.Counters = []string{"blocked", "extra"}
	for _, ch := range rs.Chains {
		for i, r := range ch.Rules {
			for j, e := range r.Exprs {
				if e == (rules.Counter{Name: "passed"}) {
					ch.Rules[i].Exprs[j] = rules.Counter{}
				}
			}
		}
	}
	applyFake(t, c, rs)
	rank := map[string]int{
		"NEWTABLE": 0, "DELRULE": 1, "DELSETELEM": 2, "DELSET": 2, "DELCHAIN": 3, "DELOBJ": 4,
		"NEWOBJ": 5, "NEWCHAIN": 6, "NEWSET": 7, "NEWSETELEM": 7, "NEWRULE": 8, "fill": 9,
	}
	last := 0
	ops := batchOps(k.lastBatch())
	// The elements of new and flushed sets come after the rules; those
	// of sets updated by their difference before.
	filled := map[string]bool{}
	for _, m := range k.lastBatch() {
		a := attrsOf(m)
		switch uint16(m.Header.Type) {
		case unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWSET:
			filled[str(a[unix.NFTA_SET_NAME])] = true
		case unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_DELSETELEM:
			if _, some := a[unix.NFTA_SET_ELEM_LIST_ELEMENTS]; !some {
				filled[str(a[unix.NFTA_SET_ELEM_LIST_SET])] = true // flushed
			}
		}
	}
	for _, op := range ops {
		kind, set, _ := strings.Cut(op, " ")
		if kind == "NEWSETELEM" && filled[set] {
			kind = "fill"
		}
		r, ok := rank[kind]
		if !ok {
			t.Fatalf("unexpected %s", op)
		}
		if r < last {
			t.Errorf("%s comes after a later kind of message:\n%s", op, strings.Join(ops, "\n"))
		}
		last = r
	}
	if got := opsOf(ops, "DELOBJ"); !slices.Equal(got, []string{"passed"}) {
		t.Errorf("deleted objects %v, want [passed]", got)
	}
	if got := opsOf(ops, "NEWOBJ"); !slices.Equal(got, []string{"extra"}) {
		t.Errorf("added objects %v, want [extra]", got)
	}
	batch := k.lastBatch()
	var lastRule netlink.Message
	for _, m := range batch {
		if m.Header.Type == msgType(unix.NFT_MSG_NEWRULE) {
			lastRule = m
		}
	}
	if _, ok := udataGet(attrsOf(lastRule)[unix.NFTA_RULE_USERDATA], udataRuleApplyID); !ok {
		t.Error("the last rule carries no apply id")
	}
}

func TestFakeReapplyChangedStructure(t *testing.T) {
	t.Parallel()
	k := newFakeKernel()
	c := k.conn()
	applyFake(t, c, testRuleset("t", 3000))
	before := k.handles("t")
	k.count("t", "passed", 7, 700)

	rs := changedRuleset("t", 3000)
	applyFake(t, c, rs)
	ops := batchOps(k.lastBatch())
	for _, tc := range []struct {
		kind string
		want []string
	}{
		{"DELTABLE", nil},
		{"DELCHAIN", []string{"deeper"}},
		{"NEWCHAIN", nil},
		{"DELSET", []string{"names13", "upstreams6"}},
		{"NEWSET", []string{"names13"}},
		{"DELOBJ", nil},
		{"NEWOBJ", nil},
	} {
		if got := opsOf(ops, tc.kind); !slices.Equal(got, tc.want) {
			t.Errorf("%s %v, want %v", tc.kind, got, tc.want)
		}
	}
	after := k.handles("t")
	for name, h := range before {
		switch name {
		case "chain deeper", "set upstreams6":
			if _, ok := after[name]; ok {
				t.Errorf("%s still exists", name)
			}
		case "set names13":
			if after[name] == h {
				t.Errorf("%s was not re-created", name)
			}
		default:
			if after[name] != h {
				t.Errorf("%s has handle %d, was %d", name, after[name], h)
			}
		}
	}
	if got := k.setSize("t", "names13"); got != 2 {
		t.Errorf("names13 holds %d elements", got)
	}
	if ctrs, err := c.Counters(context.Background(), "t"); err != nil || ctrs["passed"].Packets != 7 {
		t.Errorf("Counters = %v, %v; want passed to keep 7 packets", ctrs, err)
	}

	// And back: the removed chain and set return, names13 is reshaped
	// again.
	applyFake(t, c, testRuleset("t", 3000))
	ops = batchOps(k.lastBatch())
	if got := opsOf(ops, "NEWCHAIN"); !slices.Equal(got, []string{"deeper"}) {
		t.Errorf("NEWCHAIN %v, want [deeper]", got)
	}
	if got := opsOf(ops, "NEWSET"); !slices.Equal(got, []string{"names13", "upstreams6"}) {
		t.Errorf("NEWSET %v, want [names13 upstreams6]", got)
	}
	if got := opsOf(ops, "DELCHAIN"); len(got) > 0 {
		t.Errorf("DELCHAIN %v", got)
	}
}

func TestFakeReapplyChangedChains(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		change  func(rs *rules.Ruleset)
		deleted []string // and re-created
	}{
		{"base chain priority", func(rs *rules.Ruleset) { chainNamed(rs, "nat-postrouting").Priority = 110 }, []string{"nat-postrouting"}},
		{"base chain type", func(rs *rules.Ruleset) {
			ch := chainNamed(rs, "nat-postrouting")
			ch.Type, ch.Rules = rules.ChainFilter, nil
		}, []string{"nat-postrouting"}},
		{"regular chain comment", func(rs *rules.Ruleset) { chainNamed(rs, "check").Comment = "other" }, []string{"check"}},
		// The kernel ignores the user data of an existing chain: a base
		// chain's comment stays rather than its hook going away.
		{"base chain comment", func(rs *rules.Ruleset) { chainNamed(rs, "forward").Comment = "new" }, nil},
		{"key length", func(rs *rules.Ruleset) {
			s := rs.Set("names13")
			s.KeyLen, s.Typeof[0].LenBits = 16, 128
			for i := range s.Elements {
				s.Elements[i].Key = append(s.Elements[i].Key, 0, 0, 0)
			}
		}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			k := newFakeKernel()
			c := k.conn()
			applyFake(t, c, testRuleset("t", 10))
			rs := testRuleset("t", 10)
			tc.change(rs)
			applyFake(t, c, rs)
			ops := batchOps(k.lastBatch())
			if got := opsOf(ops, "DELCHAIN"); !slices.Equal(got, tc.deleted) {
				t.Errorf("DELCHAIN %v, want %v", got, tc.deleted)
			}
			if got := opsOf(ops, "NEWCHAIN"); !slices.Equal(got, tc.deleted) {
				t.Errorf("NEWCHAIN %v, want %v", got, tc.deleted)
			}
		})
	}
}

func chainNamed(rs *rules.Ruleset, name string) *rules.Chain {
	for _, ch := range rs.Chains {
		if ch.Name == name {
			return ch
		}
	}
	panic("no chain " + name)
}

// TestFakeReapplyRestoresPolicy: a kept base chain whose policy someone
// changed gets ours back through an update, not a re-creation.
func TestFakeReapplyRestoresPolicy(t *testing.T) {
	t.Parallel()
	k := newFakeKernel()
	c := k.conn()
	applyFake(t, c, testRuleset("t", 10))
	k.mu.Lock()
	k.tables["t"].chains["forward"].policy = 0 // NF_DROP
	k.mu.Unlock()
	applyFake(t, c, testRuleset("t", 10))
	ops := batchOps(k.lastBatch())
	if got := opsOf(ops, "NEWCHAIN"); !slices.Equal(got, []string{"forward"}) {
		t.Errorf("NEWCHAIN %v, want [forward]", got)
	}
	if got := opsOf(ops, "DELCHAIN"); len(got) > 0 {
		t.Errorf("DELCHAIN %v", got)
	}
	if p := k.tables["t"].chains["forward"].policy; p != chainPolicyAccept {
		t.Errorf("policy %d after re-apply", p)
	}
}

// TestFakeReapplyForeignObjects: whatever else is in the table goes, as it
// did when the table was re-created.
func TestFakeReapplyForeignObjects(t *testing.T) {
	t.Parallel()
	k := newFakeKernel()
	c := k.conn()
	applyFake(t, c, testRuleset("t", 10))
	k.mu.Lock()
	tb := k.tables["t"]
	k.handle++
	tb.chains["debug"] = &fakeChain{handle: k.handle, rules: []*fakeRule{{jumps: []string{"deeper"}, sets: []string{"names13"}}}}
	k.handle++
	tb.objs["q"] = &fakeObj{handle: k.handle, typ: unix.NFT_OBJECT_QUOTA}
	k.mu.Unlock()
	applyFake(t, c, testRuleset("t", 10))
	ops := batchOps(k.lastBatch())
	if got := opsOf(ops, "DELCHAIN"); !slices.Equal(got, []string{"debug"}) {
		t.Errorf("DELCHAIN %v, want [debug]", got)
	}
	if got := opsOf(ops, "DELOBJ"); !slices.Equal(got, []string{"q"}) {
		t.Errorf("DELOBJ %v, want [q]", got)
	}
}

// TestFakeInPlaceLostAcks: an in-place commit keeps the table handle, so
// the outcome after lost acks is decided by the apply id in the last rule.
func TestFakeInPlaceLostAcks(t *testing.T) {
	t.Parallel()
	k := newFakeKernel()
	c := k.conn()
	applyFake(t, c, testRuleset("t", 10))
	k.lostAcks = true
	var unknown int
	c.onUnknown = func(error) { unknown++ }
	st := applyFake(t, c, changedRuleset("t", 6000))
	if !st.InPlace || unknown != 1 {
		t.Errorf("InPlace %v, %d outcomes re-checked", st.InPlace, unknown)
	}
	if got := k.setSize("t", "big"); got != 6000 {
		t.Errorf("big holds %d elements", got)
	}

	// Our batch is refused and someone else commits: the generation
	// moves, but our apply id is nowhere.
	k.failMsg = func(m netlink.Message) error {
		if m.Header.Type == msgType(unix.NFT_MSG_NEWRULE) {
			k.gen += 5
			return unix.ENOENT
		}
		return nil
	}
	_, err := c.Apply(context.Background(), testRuleset("t", 10))
	if err == nil || !strings.Contains(err.Error(), "no rule with our apply id") || !errors.Is(err, unix.ENOBUFS) {
		t.Errorf("Apply = %v, want no apply id found", err)
	}
	if got := k.setSize("t", "big"); got != 6000 {
		t.Errorf("big holds %d elements after the refused batch", got)
	}
}

// TestFakeInPlaceRefused: a refused in-place batch changes nothing, in
// each of its phases.
func TestFakeInPlaceRefused(t *testing.T) {
	t.Parallel()
	for _, typ := range []uint16{unix.NFT_MSG_DELRULE, unix.NFT_MSG_DELSET, unix.NFT_MSG_DELSETELEM, unix.NFT_MSG_DELCHAIN, unix.NFT_MSG_NEWSET, unix.NFT_MSG_NEWSETELEM} {
		k := newFakeKernel()
		c := k.conn()
		applyFake(t, c, testRuleset("t", 10))
		k.count("t", "blocked", 1, 100)
		before := k.String()
		k.failMsg = func(m netlink.Message) error {
			if m.Header.Type == msgType(typ) {
				return unix.EINVAL
			}
			return nil
		}
		if _, err := c.Apply(context.Background(), changedRuleset("t", 10)); !errors.Is(err, unix.EINVAL) {
			t.Errorf("message type %d refused: Apply = %v", typ, err)
		}
		if after := k.String(); after != before {
			t.Errorf("message type %d refused: state changed:\n%s\nwas:\n%s", typ, after, before)
		}
	}
}

// elemMsgs returns the element ids (key + interval end byte) of the
// NEWSETELEM or DELSETELEM messages for set in batch.
func elemMsgs(batch []netlink.Message, typ uint16, set string) []string {
	var out []string
	for _, m := range batch {
		if m.Header.Type != msgType(typ) {
			continue
		}
		a := attrsOf(m)
		if str(a[unix.NFTA_SET_ELEM_LIST_SET]) != set {
			continue
		}
		out = append(out, elemKeys(a[unix.NFTA_SET_ELEM_LIST_ELEMENTS])...)
	}
	slices.Sort(out)
	return out
}

// TestFakeReapplySmallSetDiff: a changed small set gets exactly its
// difference (a changed map value is deleted and added again), unchanged
// small sets, the interval set among them, are not touched, a changed
// interval set is flushed and refilled, and the kernel ends up holding
// exactly the new elements.
func TestFakeReapplySmallSetDiff(t *testing.T) {
	t.Parallel()
	k := newFakeKernel()
	c := k.conn()
	applyFake(t, c, testRuleset("t", 10))
	h0 := k.handles("t")

	rs := testRuleset("t", 10)
	rs.Set("upstreams4").Elements = []rules.Element{
		{Key: hostU32(0), Data: addrPort(addr4("198.51.100.1"), 53)}, // same
		{Key: hostU32(1), Data: addrPort(addr4("198.51.100.9"), 53)}, // new data
		{Key: hostU32(2), Data: addrPort(addr4("198.51.100.3"), 53)}, // new
	}
	rs.Set("upstreams6").Elements = rs.Set("upstreams6").Elements[:1] // one goes
	applyFake(t, c, rs)
	batch := k.lastBatch()
	ops := batchOps(batch)
	id := func(key []byte) string { return elemID(key, false) }
	if got, want := elemMsgs(batch, unix.NFT_MSG_DELSETELEM, "upstreams4"), []string{id(hostU32(1))}; !slices.Equal(got, want) {
		t.Errorf("upstreams4: deleted %q, want %q", got, want)
	}
	want := []string{id(hostU32(1)), id(hostU32(2))}
	slices.Sort(want)
	if got := elemMsgs(batch, unix.NFT_MSG_NEWSETELEM, "upstreams4"); !slices.Equal(got, want) {
		t.Errorf("upstreams4: added %q, want %q", got, want)
	}
	if got, want := elemMsgs(batch, unix.NFT_MSG_DELSETELEM, "upstreams6"), []string{id(hostU32(1))}; !slices.Equal(got, want) {
		t.Errorf("upstreams6: deleted %q, want %q", got, want)
	}
	if got := elemMsgs(batch, unix.NFT_MSG_NEWSETELEM, "upstreams6"); len(got) > 0 {
		t.Errorf("upstreams6: added %q, want nothing", got)
	}
	for _, name := range []string{"clients4", "names13", "actions"} {
		for _, op := range ops {
			if strings.HasSuffix(op, "SETELEM "+name) {
				t.Errorf("unchanged set %s: %s", name, op)
			}
		}
	}
	for _, s := range rs.Sets {
		wantE, ok := wantElems(s)
		if !ok {
			t.Fatalf("set %s: duplicate elements in the fixture", s.Name)
		}
		got := k.elemsOf("t", s.Name)
		if s.DataType == rules.TypeVerdict {
			if len(got) != len(wantE) {
				t.Errorf("set %s holds %d elements, want %d", s.Name, len(got), len(wantE))
			}
			continue
		}
		gotE := map[string]string{}
		for id, v := range got {
			gotE[id] = strings.TrimPrefix(v, "\x00")
		}
		if !maps.Equal(gotE, wantE) {
			t.Errorf("set %s holds %q, want %q", s.Name, gotE, wantE)
		}
	}
	if h := k.handles("t"); !maps.Equal(h, h0) {
		t.Errorf("handles changed:\n%v\nwere:\n%v", h, h0)
	}

	// A changed interval set: flushed and refilled.
	rs.Set("clients4").Elements = append(rs.Set("clients4").Elements, rules.Element{Key: addr4("10.0.0.0"), KeyEnd: addr4("10.1.0.0")})
	applyFake(t, c, rs)
	ops = batchOps(k.lastBatch())
	if got := opsOf(ops, "DELSETELEM"); !slices.Equal(got, []string{"clients4", "verdicts"}) {
		t.Errorf("DELSETELEM for %v, want [clients4 verdicts]", got)
	}
	if got := k.setSize("t", "clients4"); got != 10 {
		t.Errorf("clients4 holds %d elements, want 10", got)
	}
	// The old behaviour, for comparisons: every kept set flushed.
	c.flushAllSets = true
	applyFake(t, c, rs)
	var all []string
	for _, s := range rs.Sets {
		all = append(all, s.Name)
	}
	slices.Sort(all)
	if got := opsOf(batchOps(k.lastBatch()), "DELSETELEM"); !slices.Equal(got, all) {
		t.Errorf("flushAllSets: DELSETELEM for %v, want %v", got, all)
	}
}

// TestFakeReapplySmallSetBadElement: an element the checks refuse fails
// the apply even when the set's other elements are unchanged.
func TestFakeReapplySmallSetBadElement(t *testing.T) {
	t.Parallel()
	k := newFakeKernel()
	c := k.conn()
	applyFake(t, c, testRuleset("t", 10))
	rs := testRuleset("t", 10)
	s := rs.Set("upstreams4")
	s.Elements[0].Data = s.Elements[0].Data[:4]
	if _, err := c.Apply(context.Background(), rs); err == nil {
		t.Fatal("Apply with a short map value succeeded")
	}
}
