//go:build linux

package nft

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"time"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"nftdns/rules"
)

// Base is what the caller believes the kernel holds: the ruleset of its
// last successful apply and the apply id that apply's rules carry
// (ApplyStats.ApplyID). It is recompiled from the caller's records, not
// read back from the kernel: reading a million elements takes minutes
// (DESIGN §5.6).
type Base struct {
	Ruleset *rules.Ruleset
	ApplyID []byte
}

// ApplyOver makes inet <rs.Table> hold rs, like Apply, but first tries an
// incremental update over base: when rs has the same structure as
// base.Ruleset (table, counters, chains and their rules, set declarations:
// see StructureDiff) and only set elements differ, it sends one
// generation-guarded transaction of element deletions and additions and
// nothing else, so the table, its chains, rules and sets keep their
// handles and the kernel keeps its hooks.
//
// base is trusted only if the kernel still holds its rules: the rule that
// carries the apply id (the last rule of the ruleset) must carry
// base.ApplyID, which is read under the same generation guard as the
// commit. Elements someone else changed by hand are not detected unless
// the diff touches them: a deletion of a missing element (ENOENT) or an
// addition of a present one (EEXIST, the batch's additions are exclusive)
// makes the kernel refuse the batch, and ApplyOver falls back.
//
// Otherwise (no base, another structure, another apply id, the batch
// refused) it makes a full Apply marked with applyID (random if nil) and
// says why in ApplyStats.Fallback. A generation change between the read
// and the commit is an error wrapping ErrGenerationChanged either way.
func (c *Conn) ApplyOver(ctx context.Context, rs *rules.Ruleset, base *Base, applyID []byte) (*ApplyStats, error) {
	if rs == nil {
		return nil, errors.New("apply: nil ruleset")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	reason := "no previous ruleset to compare with"
	if base != nil && base.Ruleset != nil && len(base.ApplyID) > 0 {
		st, why, err := c.applyDiff(ctx, base, rs)
		if err != nil {
			return nil, fmt.Errorf("apply table %q incrementally: %w", rs.Table, err)
		}
		if why == "" {
			return st, nil
		}
		reason = why
	}
	st, err := c.apply(ctx, rs, applyID)
	if err != nil {
		return nil, fmt.Errorf("apply table %q: %w", rs.Table, err)
	}
	st.Fallback = reason
	return st, nil
}

// StructureDiff returns "" if b differs from a only in set elements and
// leaf chains (see leafChains), and otherwise what differs first. Rules
// are compared by their expressions and text; a set's declaration by
// everything but its elements.
func StructureDiff(a, b *rules.Ruleset) string {
	_, why := structureDiff(a, b)
	return why
}

// chainDiff is the change of leaf chains from one ruleset to another.
type chainDiff struct {
	add     []*rules.Chain // new, with their rules
	replace []*rules.Chain // their rules change
	remove  []string
}

// leafChains are the chains of rs that have no hook and that no rule jumps
// to: only verdict map elements reach them (the chains that tell fold
// twins apart, the suffix boundary chains). An incremental update may add
// them, drop them and replace their rules: one name added to a list can
// need a chain of its own, and that must not cost a full apply.
func leafChains(rs *rules.Ruleset) map[string]bool {
	jumped := map[string]bool{}
	for _, ch := range rs.Chains {
		for _, r := range ch.Rules {
			for _, e := range r.Exprs {
				if v, ok := e.(rules.Verdict); ok && (v.Kind == rules.Jump || v.Kind == rules.Goto) {
					jumped[v.Chain] = true
				}
			}
		}
	}
	leaf := map[string]bool{}
	for _, ch := range rs.Chains {
		if ch.Hook == rules.HookNone && !jumped[ch.Name] {
			leaf[ch.Name] = true
		}
	}
	return leaf
}

func sameRules(a, b []rules.Rule) bool {
	if len(a) != len(b) {
		return false
	}
	for j := range a {
		if a[j].Text != b[j].Text || !reflect.DeepEqual(a[j].Exprs, b[j].Exprs) {
			return false
		}
	}
	return true
}

// structureDiff is StructureDiff, with the leaf chain changes when it
// returns "".
func structureDiff(a, b *rules.Ruleset) (*chainDiff, string) {
	switch {
	case a.Table != b.Table:
		return nil, "table name changed"
	case a.Comment != b.Comment:
		return nil, "table comment changed"
	case !slices.Equal(a.Counters, b.Counters):
		return nil, "counters changed"
	case len(a.Sets) != len(b.Sets):
		return nil, fmt.Sprintf("%d sets instead of %d", len(b.Sets), len(a.Sets))
	}
	for i, s := range a.Sets {
		t := b.Sets[i]
		if s.Name != t.Name || s.Comment != t.Comment || s.KeyType != t.KeyType || s.KeyLen != t.KeyLen ||
			!slices.Equal(s.Typeof, t.Typeof) || s.DataType != t.DataType || s.DataLen != t.DataLen ||
			s.Interval != t.Interval || s.Decl != t.Decl {
			return nil, fmt.Sprintf("set %q declared differently (was %q)", t.Name, s.Name)
		}
	}
	leafA, leafB := leafChains(a), leafChains(b)
	other := func(rs *rules.Ruleset, leaf map[string]bool) []*rules.Chain {
		var out []*rules.Chain
		for _, ch := range rs.Chains {
			if !leaf[ch.Name] {
				out = append(out, ch)
			}
		}
		return out
	}
	ca, cb := other(a, leafA), other(b, leafB)
	if len(ca) != len(cb) {
		return nil, fmt.Sprintf("%d chains instead of %d", len(b.Chains), len(a.Chains))
	}
	for i, ch := range ca {
		d := cb[i]
		if ch.Name != d.Name || ch.Hook != d.Hook || ch.Type != d.Type || ch.Priority != d.Priority || ch.Comment != d.Comment {
			return nil, fmt.Sprintf("chain %q declared differently (was %q)", d.Name, ch.Name)
		}
		if len(ch.Rules) != len(d.Rules) {
			return nil, fmt.Sprintf("chain %q has %d rules instead of %d", d.Name, len(d.Rules), len(ch.Rules))
		}
		for j := range ch.Rules {
			if ch.Rules[j].Text != d.Rules[j].Text || !reflect.DeepEqual(ch.Rules[j].Exprs, d.Rules[j].Exprs) {
				return nil, fmt.Sprintf("rule %d of chain %q changed", j, d.Name)
			}
		}
	}
	cd := &chainDiff{}
	inA := map[string]*rules.Chain{}
	for _, ch := range a.Chains {
		if leafA[ch.Name] {
			inA[ch.Name] = ch
		}
	}
	for _, d := range b.Chains {
		if !leafB[d.Name] {
			continue
		}
		ch := inA[d.Name]
		delete(inA, d.Name)
		switch {
		case ch == nil:
			cd.add = append(cd.add, d)
		case ch.Comment != d.Comment:
			// The kernel keeps an existing chain's comment.
			return nil, fmt.Sprintf("chain %q declared differently", d.Name)
		case !sameRules(ch.Rules, d.Rules):
			cd.replace = append(cd.replace, d)
		}
	}
	for _, ch := range a.Chains {
		if inA[ch.Name] != nil {
			cd.remove = append(cd.remove, ch.Name)
		}
	}
	return cd, ""
}

// setDiff is the element change of one set: the keys to delete and the
// elements to add. A map element whose data or verdict changes is in both.
type setDiff struct {
	del []rules.Element // the old elements: an interval's end goes too
	add []rules.Element
}

// elemValue is what a key maps to, for comparing map elements.
func elemValue(e *rules.Element) string {
	if e.Verdict != nil {
		return fmt.Sprintf("verdict %d %q", e.Verdict.Kind, e.Verdict.Chain)
	}
	return string(e.Data)
}

// sortedElems returns the indexes of s's elements in key order, or false
// if two elements have the same key (the kernel would refuse that anyway;
// a full apply reports it).
func sortedElems(s *rules.Set) ([]int32, bool) {
	idx := make([]int32, len(s.Elements))
	for i := range idx {
		idx[i] = int32(i)
	}
	less := func(i, j int32) int { return bytes.Compare(s.Elements[i].Key, s.Elements[j].Key) }
	// The compiler emits sorted elements; sorting is then a check.
	if !slices.IsSortedFunc(idx, less) {
		slices.SortFunc(idx, less)
	}
	for k := 1; k < len(idx); k++ {
		if less(idx[k-1], idx[k]) == 0 {
			return nil, false
		}
	}
	return idx, true
}

// diffSets compares the elements of a and b, whose declarations are the
// same, by a merge of their key orders: no map of a million keys. It
// returns "" and the changes, or why they cannot be sent as element
// updates.
func diffSets(a, b *rules.Set) (*setDiff, string) {
	if len(a.Elements) == len(b.Elements) && (len(a.Elements) == 0 || &a.Elements[0] == &b.Elements[0]) {
		// The same elements (a caller that changes a few small sets
		// shares the others): nothing to compare.
		return &setDiff{}, ""
	}
	ai, ok := sortedElems(a)
	if !ok {
		return nil, fmt.Sprintf("set %q: a key given twice", a.Name)
	}
	bi, ok := sortedElems(b)
	if !ok {
		return nil, fmt.Sprintf("set %q: a key given twice", b.Name)
	}
	d := &setDiff{}
	i, j := 0, 0
	for i < len(ai) || j < len(bi) {
		var c int
		switch {
		case i == len(ai):
			c = 1
		case j == len(bi):
			c = -1
		default:
			c = bytes.Compare(a.Elements[ai[i]].Key, b.Elements[bi[j]].Key)
		}
		switch {
		case c < 0:
			d.del = append(d.del, a.Elements[ai[i]])
			i++
		case c > 0:
			d.add = append(d.add, b.Elements[bi[j]])
			j++
		default:
			ea, eb := &a.Elements[ai[i]], &b.Elements[bi[j]]
			if elemValue(ea) != elemValue(eb) || !bytes.Equal(ea.KeyEnd, eb.KeyEnd) {
				// A range that changes its end goes and comes back whole.
				// Should the kernel's interval backend refuse the partial
				// update (overlap checks), the batch is refused whole and
				// ApplyOver falls back to a full apply.
				d.del = append(d.del, *ea)
				d.add = append(d.add, *eb)
			}
			i++
			j++
		}
	}
	return d, ""
}

// diffRulesets returns the element changes from a to b per set index of
// b.Sets (nil where a set does not change) and the leaf chain changes, or
// why b is not an element update of a.
func diffRulesets(a, b *rules.Ruleset) ([]*setDiff, *chainDiff, string) {
	cd, why := structureDiff(a, b)
	if why != "" {
		return nil, nil, why
	}
	out := make([]*setDiff, len(b.Sets))
	for i := range b.Sets {
		d, why := diffSets(a.Sets[i], b.Sets[i])
		if why != "" {
			return nil, nil, why
		}
		if len(d.del) > 0 || len(d.add) > 0 {
			out[i] = d
		}
	}
	return out, cd, ""
}

// ElementDiff counts the kernel elements an incremental update from a to
// b would add and delete, or says why there would be none (a full apply).
func ElementDiff(a, b *rules.Ruleset) (added, removed int, why string) {
	diffs, _, why := diffRulesets(a, b)
	if why != "" {
		return 0, 0, why
	}
	for _, d := range diffs {
		if d != nil {
			added += len(d.add)
			removed += len(d.del)
		}
	}
	return added, removed, ""
}

// markChain is the chain whose last rule carries the apply id: the last
// chain with rules (see buildPlanFor).
func markChain(rs *rules.Ruleset) string {
	name := ""
	for _, ch := range rs.Chains {
		if len(ch.Rules) > 0 {
			name = ch.Name
		}
	}
	return name
}

// absentKey is a deleted element that verification looks up.
type absentKey struct {
	set string
	key []byte
}

// buildDiffPlan queues the new leaf chains with their rules and the new
// rules of changed ones; then, set by set, the element deletions and
// additions (a map element whose value changes is deleted and added again
// in the same batch, which the kernel accepts); then the removal of the
// leaf chains that go, which the deleted elements no longer reference.
func buildDiffPlan(rs *rules.Ruleset, diffs []*setDiff, cd *chainDiff, comment string) (*plan, []absentKey, error) {
	b, err := newBuilder(rs.Table, comment)
	if err != nil {
		return nil, nil, err
	}
	b.p.inPlace, b.p.chunksOnly = true, true
	table := &nftables.Table{Name: rs.Table, Family: nftables.TableFamilyINet}
	sets := make(map[string]*setPlan, len(rs.Sets))
	for i, s := range rs.Sets {
		sets[s.Name] = &setPlan{set: s, id: uint32(i + 1)}
	}
	flush := func(chain string) error {
		return b.add(fmt.Sprintf("flush chain %q", chain), unix.NFT_MSG_DELRULE, 0, []netlink.Attribute{
			{Type: unix.NFTA_RULE_TABLE, Data: cstr(rs.Table)}, {Type: unix.NFTA_RULE_CHAIN, Data: cstr(chain)},
		})
	}
	for _, ch := range cd.add {
		if _, err := b.addChain(table, ch); err != nil {
			return nil, nil, err
		}
	}
	for _, ch := range cd.replace {
		if err := flush(ch.Name); err != nil {
			return nil, nil, err
		}
	}
	for _, ch := range append(slices.Clone(cd.add), cd.replace...) {
		lc, err := libChain(table, ch)
		if err != nil {
			return nil, nil, fmt.Errorf("chain %q: %w", ch.Name, err)
		}
		for i, r := range ch.Rules {
			if err := b.addRule(table, lc, ch, i, r, sets, nil); err != nil {
				return nil, nil, err
			}
		}
	}
	var absent []absentKey
	for i, s := range rs.Sets {
		d := diffs[i]
		if d == nil {
			continue
		}
		sp := &setPlan{set: s, id: uint32(i + 1)}
		if len(d.del) > 0 {
			ks := make([]kelem, 0, len(d.del))
			for _, e := range d.del {
				ks = append(ks, kelem{key: e.Key})
				if s.Interval && len(e.KeyEnd) > 0 {
					ks = append(ks, kelem{key: e.KeyEnd, end: true})
				}
			}
			if err := b.delKelems(rs.Table, s.Name, ks); err != nil {
				return nil, nil, fmt.Errorf("set %q: %w", s.Name, err)
			}
			// A sample is enough: the kernel deletes all or refuses all.
			// Keys added back (a map value that changed) are present; a
			// lookup in an interval set finds any range holding the key.
			readded := make(map[string]bool, len(d.add))
			for _, e := range d.add {
				readded[string(e.Key)] = true
			}
			var gone [][]byte
			for _, e := range d.del {
				if !readded[string(e.Key)] && !s.Interval {
					gone = append(gone, e.Key)
				}
			}
			if len(gone) > 0 {
				absent = append(absent, absentKey{s.Name, gone[0]}, absentKey{s.Name, gone[len(gone)-1]})
			}
		}
		if len(d.add) > 0 {
			if err := b.addElements(table, sp, d.add); err != nil {
				return nil, nil, fmt.Errorf("set %q: %w", s.Name, err)
			}
		}
		// verify looks up the first and last element of each chunk added.
		sp.kelems = kernelElems(s)
		b.p.sets = append(b.p.sets, sp)
		b.p.elements += len(d.add)
	}
	for _, name := range cd.remove {
		if err := flush(name); err != nil {
			return nil, nil, err
		}
		if err := b.add(fmt.Sprintf("delete chain %q", name), unix.NFT_MSG_DELCHAIN, 0, []netlink.Attribute{
			{Type: unix.NFTA_CHAIN_TABLE, Data: cstr(rs.Table)}, {Type: unix.NFTA_CHAIN_NAME, Data: cstr(name)},
		}); err != nil {
			return nil, nil, err
		}
	}
	if err := b.sync(); err != nil {
		return nil, nil, err
	}
	for _, m := range b.p.msgs {
		if err := checkEncoding(m); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", m.desc, err)
		}
		b.p.bytes += 16 + len(m.msg.Data)
	}
	return b.p, absent, nil
}

// applyDiff is the incremental path of ApplyOver. It returns a reason and
// no error when it did not apply and a full apply should.
func (c *Conn) applyDiff(ctx context.Context, base *Base, rs *rules.Ruleset) (*ApplyStats, string, error) {
	start := time.Now()
	diffs, cd, why := diffRulesets(base.Ruleset, rs)
	if why != "" {
		return nil, why, nil
	}
	mark := markChain(base.Ruleset)
	if mark == "" {
		return nil, "the ruleset has no rule to carry an apply id", nil
	}
	if markChain(rs) != mark || leafChains(rs)[mark] {
		return nil, "the chain that carries the apply id changed", nil
	}
	if err := ctx.Err(); err != nil {
		return nil, "", err
	}
	nc, err := c.connect()
	if err != nil {
		return nil, "", err
	}
	defer nc.Close()
	gen, err := getGen(nc)
	if err != nil {
		return nil, "", err
	}
	// Read under the generation guard, like the in-place path's state.
	t, err := getTable(nc, rs.Table)
	if err != nil {
		return nil, "", err
	}
	if t == nil {
		return nil, "table not present", nil
	}
	ok, err := hasApplyID(nc, rs.Table, mark, base.ApplyID)
	if err != nil {
		return nil, "", err
	}
	if !ok {
		return nil, fmt.Sprintf("the kernel's rules are not the recorded ones (no apply id %x in chain %q)", base.ApplyID, mark), nil
	}
	p, absent, err := buildDiffPlan(rs, diffs, cd, t.comment)
	if err != nil {
		return nil, "", err
	}
	stats := &ApplyStats{Elements: rs.ElementCount(), InPlace: true, Incremental: true, ApplyID: base.ApplyID}
	for _, d := range diffs {
		if d != nil {
			stats.Added += len(d.add)
			stats.Removed += len(d.del)
		}
	}
	if len(p.msgs) == 0 {
		// Nothing changed: no transaction at all.
		stats.Generation, stats.Duration = gen, time.Since(start)
		return stats, "", nil
	}
	if c.onPlan != nil {
		c.onPlan(p)
	}
	if err := c.sizeBuffers(nc, p.bytes, len(p.msgs)+2); err != nil {
		return nil, "", err
	}
	if c.beforeCommit != nil {
		c.beforeCommit()
	}
	if err := ctx.Err(); err != nil {
		return nil, "", err
	}
	err = sendBatch(nc, p.msgs, gen)
	var fail *txFailure
	switch {
	case err == nil:
	case errors.As(err, &fail) && errors.Is(err, unix.ERESTART):
		return nil, "", fmt.Errorf("%w: generation %d is no longer current: %w", ErrGenerationChanged, gen, err)
	case errors.As(err, &fail):
		// Refused whole: nothing changed. Most likely the kernel's
		// elements are not the recorded ones.
		return nil, fmt.Sprintf("the kernel refused the element changes (%v)", err), nil
	case errors.Is(err, errUnknown):
		if c.onUnknown != nil {
			c.onUnknown(err)
		}
		// No rule carries a fresh apply id here; the generation says
		// whether anything was committed, and the element checks below
		// whether it was ours.
		now, gerr := c.currentGen()
		if gerr != nil {
			return nil, "", fmt.Errorf("%w; re-check: %w", err, gerr)
		}
		if now == gen {
			return nil, "", fmt.Errorf("%w; re-check: generation unchanged, the batch was not committed", err)
		}
	default:
		return nil, "", err
	}
	if err := c.verify(ctx, p); err != nil {
		return nil, "", fmt.Errorf("committed, but verification failed: %w", err)
	}
	if err := c.verifyAbsent(ctx, rs.Table, absent); err != nil {
		return nil, "", fmt.Errorf("committed, but verification failed: %w", err)
	}
	stats.Messages = len(p.msgs) + 2
	stats.Bytes = p.bytes + 2*20 + 8
	stats.Duration = time.Since(start)
	stats.Generation = nextGen(gen)
	return stats, "", nil
}

// currentGen reads the ruleset generation on a fresh socket.
func (c *Conn) currentGen() (uint32, error) {
	nc, err := c.connect()
	if err != nil {
		return 0, err
	}
	defer nc.Close()
	return getGen(nc)
}

// verifyAbsent checks that deleted elements are gone: a direct lookup of
// each must fail with ENOENT.
func (c *Conn) verifyAbsent(ctx context.Context, table string, keys []absentKey) error {
	if len(keys) == 0 {
		return nil
	}
	return c.withSocket(ctx, func(nc *netlink.Conn) error {
		for _, k := range keys {
			err := getElements(nc, table, k.set, []kelem{{key: k.key}})
			if err == nil {
				return fmt.Errorf("set %q: deleted element %x is still there", k.set, k.key)
			}
			if !errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("set %q: look up deleted element: %w", k.set, err)
			}
		}
		return nil
	})
}

// delKelems queues DELSETELEM messages for kernel elements (an interval
// end element carries its flag), in chunks of less than maxElemListBytes.
func (b *builder) delKelems(table, set string, keys []kelem) error {
	var (
		list      []netlink.Attribute
		listBytes int
	)
	flush := func() error {
		if len(list) == 0 {
			return nil
		}
		data, err := netlink.MarshalAttributes(list)
		if err != nil {
			return err
		}
		desc := fmt.Sprintf("delete %d elements of set %q", len(list), set)
		list, listBytes = nil, 0
		return b.add(desc, unix.NFT_MSG_DELSETELEM, 0, []netlink.Attribute{
			{Type: unix.NFTA_SET_ELEM_LIST_TABLE, Data: cstr(table)},
			{Type: unix.NFTA_SET_ELEM_LIST_SET, Data: cstr(set)},
			{Type: unix.NFTA_SET_ELEM_LIST_ELEMENTS | unix.NLA_F_NESTED, Data: data},
		})
	}
	for _, k := range keys {
		key, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NFTA_DATA_VALUE, Data: k.key}})
		if err != nil {
			return err
		}
		attrs := []netlink.Attribute{{Type: unix.NFTA_SET_ELEM_KEY | unix.NLA_F_NESTED, Data: key}}
		if k.end {
			attrs = append(attrs, netlink.Attribute{Type: unix.NFTA_SET_ELEM_FLAGS, Data: []byte{0, 0, 0, unix.NFT_SET_ELEM_INTERVAL_END}})
		}
		elem, err := netlink.MarshalAttributes(attrs)
		if err != nil {
			return err
		}
		size := 4 + len(elem)
		if len(list) > 0 && 4+listBytes+size > maxElemListBytes {
			if err := flush(); err != nil {
				return err
			}
		}
		list = append(list, netlink.Attribute{Type: uint16(len(list)+1) | unix.NLA_F_NESTED, Data: elem})
		listBytes += size
	}
	return flush()
}
