package cli

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"

	"nftdns/cmd/nftdns/state"
	"nftdns/rules"
)

// flagFull makes apply replace every set's elements.
const flagFull = "full"

// baseOf recompiles the ruleset generation g gave the kernel, from its
// recorded settings and stored list copies, so that the next apply can be
// sent as set element changes without reading a million elements back
// from the kernel. It returns nil, and no error, for a generation recorded
// without an apply id (before incremental applies existed): that one is
// replaced in full. The compile is deterministic, so the same inputs give
// the same ruleset; the kernel side is checked by ApplyOver (the apply id
// in the rules).
func baseOf(g *state.Generation) (*rules.Ruleset, []byte, error) {
	if g.ApplyID == "" {
		return nil, nil, nil
	}
	id, err := hex.DecodeString(g.ApplyID)
	if err != nil || len(id) == 0 {
		return nil, nil, fmt.Errorf("generation %d: apply id %q is not hex", g.Seq, g.ApplyID)
	}
	o := fromCanonical(g.Settings)
	o.skipInvalid = g.SkipInvalid
	s, _, err := o.settings()
	if err != nil {
		return nil, nil, fmt.Errorf("generation %d: %w", g.Seq, err)
	}
	lists := make([]*rules.List, len(g.Lists))
	for i := range g.Lists {
		if lists[i], err = parseStored(g, i); err != nil {
			return nil, nil, err
		}
	}
	rs, err := rules.Compile(s, lists)
	if err != nil {
		return nil, nil, fmt.Errorf("generation %d: %w", g.Seq, err)
	}
	return rs, id, nil
}

// newApplyID is a fresh random apply id for a full apply.
func newApplyID() ([]byte, error) {
	id := make([]byte, 8)
	if _, err := rand.Read(id); err != nil {
		return nil, err
	}
	return id, nil
}

// applyHow says how an apply went, for the summary line.
func applyHow(st *applyStats) string {
	switch {
	case st.Incremental:
		return fmt.Sprintf("incremental: +%d -%d elements", st.Added, st.Removed)
	case st.Fallback != "":
		return "full: " + st.Fallback
	}
	return "full"
}

func hexID(s string) ([]byte, error) {
	id, err := hex.DecodeString(s)
	if err != nil || len(id) == 0 {
		return nil, fmt.Errorf("apply id %q is not hex", s)
	}
	return id, nil
}

// dryRunHow says how apply would send in over generation cur.
func dryRunHow(cur *state.Generation, in *compiled) string {
	base, _, err := baseOf(cur)
	switch {
	case err != nil:
		return fmt.Sprintf("apply: full (generation %d cannot be rebuilt: %v)", cur.Seq, err)
	case base == nil:
		return fmt.Sprintf("apply: full (generation %d has no apply id)", cur.Seq)
	}
	added, removed, why := elementDiff(base, in.rs)
	if why != "" {
		return "apply: full (" + why + ")"
	}
	return fmt.Sprintf("apply: incremental, +%d -%d set elements, if the kernel still holds generation %d", added, removed, cur.Seq)
}

// baseResult is a base rebuilt by startBase; rs is nil when there is none
// to rebuild (no generation, another namespace or table, no apply id).
type baseResult struct {
	rs  *rules.Ruleset
	id  []byte
	seq int
	err error
}

// startBase rebuilds the current generation's ruleset in the background
// (see baseOf). The caller holds the store's lock.
func startBase(store *state.Store, netns, table string) <-chan baseResult {
	ch := make(chan baseResult, 1)
	go func() {
		cur, err := store.Current()
		if err != nil || cur.Netns != netns || cur.Settings.Table != table {
			ch <- baseResult{}
			return
		}
		rs, id, err := baseOf(cur)
		ch <- baseResult{rs: rs, id: id, seq: cur.Seq, err: err}
	}()
	return ch
}

// chooseBase returns the ruleset the kernel is believed to hold and its
// apply id, so that a change of list contents only is sent as set element
// changes; nil for a full apply (--full, no usable generation).
func chooseBase(e *env, store *state.Store, in *compiled, netns string, unchanged *state.Generation, via *applyVia) (*rules.Ruleset, []byte) {
	warn := func(seq int, err error) {
		fmt.Fprintf(e.stderr, "nftdns: cannot rebuild generation %d for an incremental apply, applying in full: %v\n", seq, err)
	}
	rebuilt := func(rs *rules.Ruleset) *rules.Ruleset {
		if rs != nil && via != nil && via.rebuilt != nil {
			return via.rebuilt(rs)
		}
		return rs
	}
	switch {
	case in.opts.full:
		return nil, nil
	case via != nil && via.base != nil:
		return via.base, via.baseID
	case unchanged != nil:
		// Same inputs, same ruleset: no need to compile it again.
		id, err := hexID(unchanged.ApplyID)
		if err != nil {
			return nil, nil
		}
		return rebuilt(in.rs), id
	case via != nil && via.baseAsync != nil:
		r := <-via.baseAsync
		if r.err != nil {
			warn(r.seq, r.err)
		}
		return rebuilt(r.rs), r.id
	}
	cur, err := store.Current()
	if err != nil || cur.Netns != netns || cur.Settings.Table != in.settings.Table {
		return nil, nil
	}
	rs, id, err := baseOf(cur)
	if err != nil {
		warn(cur.Seq, err)
		return nil, nil
	}
	return rebuilt(rs), id
}
