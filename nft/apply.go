//go:build linux

package nft

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"nftdns/rules"
)

// readBackLimit is the largest set whose elements Apply reads back to count
// them. Reading elements costs ~37 µs each (DESIGN §5.6); bigger sets are
// checked with direct lookups of the first and last element of every chunk.
const readBackLimit = 5000

// ApplyStats describes a successful Apply.
type ApplyStats struct {
	Elements   int           // set elements in the ruleset
	Messages   int           // netlink messages in the transaction, batch begin and end included
	Bytes      int           // bytes of the transaction
	Duration   time.Duration // from the generation read to the end of the verification
	Generation uint32        // ruleset generation id our commit created
	InPlace    bool          // the table existed and was updated in place

	// ApplyID is the apply id the table's rules carry after the commit
	// (nil for a ruleset without rules): a full apply's own, or the one an
	// incremental apply kept.
	ApplyID []byte
	// Incremental: only set elements changed (see ApplyOver); Added and
	// Removed count the set elements it added and deleted (a range is one;
	// a map element whose value changed is in both).
	Incremental    bool
	Added, Removed int
	// Fallback says why ApplyOver made a full apply instead ("" if it
	// did not, or was not asked to try).
	Fallback string
}

// Apply makes inet <rs.Table> hold rs, in one transaction: at every
// instant the kernel holds either the previous ruleset or the new one, and
// if the kernel refuses any part, the previous ruleset stays exactly as it
// was.
//
// A table that does not exist is created. An existing table is updated in
// place: its rules are replaced; sets that keep their shape stay, the
// small ones untouched if their elements stay and otherwise updated by
// their difference, the big ones flushed and refilled; and base chains
// whose hook, type and priority stay are kept, so their netfilter hooks
// stay registered throughout (a new
// connection that met a missing nat hook would keep a null NAT binding for
// its life). Named counters that stay keep their values. What goes is
// deleted, including chains, sets and objects someone else added to the
// table. The table's comment and a kept base chain's comment cannot change
// in place (the kernel ignores them for existing objects) and stay as they
// were; Flush, then Apply, replaces them.
//
// It reads the ruleset generation first and sends it with the batch: if
// anyone changed any part of the ruleset in between, the kernel refuses the
// batch and Apply returns an error wrapping ErrGenerationChanged. After the
// commit it checks that the table and every set element arrived.
//
// ctx is checked up to the commit; once the batch is sent Apply waits for
// the kernel's answer. A nil error means committed and verified.
func (c *Conn) Apply(ctx context.Context, rs *rules.Ruleset) (*ApplyStats, error) {
	if rs == nil {
		return nil, errors.New("apply: nil ruleset")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	stats, err := c.apply(ctx, rs, nil)
	if err != nil {
		return nil, fmt.Errorf("apply table %q: %w", rs.Table, err)
	}
	return stats, nil
}

// apply is Apply; applyID, when not nil, is the apply id to mark the rules
// with instead of a random one.
func (c *Conn) apply(ctx context.Context, rs *rules.Ruleset, applyID []byte) (*ApplyStats, error) {
	start := time.Now()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	nc, err := c.connect()
	if err != nil {
		return nil, err
	}
	defer nc.Close()

	gen, err := getGen(nc)
	if err != nil {
		return nil, err
	}
	// Everything read from here on is covered by the generation guard: if
	// it changes before the commit, the kernel refuses the batch.
	var cur *tableState
	if rs.Table != "" {
		t, err := getTable(nc, rs.Table)
		if err != nil {
			return nil, err
		}
		if t != nil && !c.forceReplace {
			var small func(string) bool
			if !c.flushAllSets {
				small = func(name string) bool { return diffable(rs.Set(name)) }
			}
			if cur, err = readTableState(nc, t, rs.Table, small); err != nil {
				return nil, err
			}
		}
	}
	if applyID == nil {
		applyID = make([]byte, 8)
		if _, err := rand.Read(applyID); err != nil {
			return nil, err
		}
	}
	auxPresent := map[rules.Family]bool{}
	if rs.Table != "" {
		for _, f := range auxFamilies {
			t, err := getTableFamily(nc, f.proto, rs.Table)
			if err != nil {
				return nil, err
			}
			auxPresent[f.fam] = t != nil
		}
	}
	p, err := buildPlanAux(rs, cur, applyID, auxPresent)
	if err != nil {
		return nil, err
	}
	if c.onPlan != nil {
		c.onPlan(p)
	}
	if err := c.sizeBuffers(nc, p.bytes, len(p.msgs)+2); err != nil {
		return nil, err
	}
	if c.beforeCommit != nil {
		c.beforeCommit()
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	err = sendBatch(nc, p.msgs, gen)
	var fail *txFailure
	switch {
	case err == nil:
	case errors.As(err, &fail) && errors.Is(err, unix.ERESTART):
		return nil, fmt.Errorf("%w: generation %d is no longer current: %w", ErrGenerationChanged, gen, err)
	case errors.Is(err, errUnknown):
		if c.onUnknown != nil {
			c.onUnknown(err)
		}
		if rerr := c.resolveUnknown(p, gen); rerr != nil {
			return nil, fmt.Errorf("%w; %w", err, rerr)
		}
		// Committed after all; the verification below decides.
	default:
		return nil, err
	}

	if err := c.verify(ctx, p); err != nil {
		return nil, fmt.Errorf("committed, but verification failed: %w", err)
	}
	return &ApplyStats{
		Elements:   p.elements,
		Messages:   len(p.msgs) + 2,
		Bytes:      p.bytes + 2*20 + 8,
		Duration:   time.Since(start),
		Generation: nextGen(gen),
		InPlace:    p.inPlace,
		ApplyID:    p.applyID,
	}, nil
}

// resolveUnknown decides, after lost acknowledgements, whether our batch
// was committed, and returns nil if it was.
//
// Not if the generation is still the one we sent: every commit changes it,
// and a refused batch does not. If it moved, that was our commit or, if
// ours was refused, someone else's. The table handle cannot tell them apart
// any more (an in-place update keeps the table), so the batch's last rule
// carries a random apply id in its user data: rules are always re-created,
// and only our batch holds that id, so finding it proves our commit. Not
// finding it means not committed, or overwritten by a later commit; either
// way it is an error.
func (c *Conn) resolveUnknown(p *plan, gen uint32) error {
	nc, err := c.connect()
	if err != nil {
		return fmt.Errorf("re-check: %w", err)
	}
	defer nc.Close()
	now, err := getGen(nc)
	if err != nil {
		return fmt.Errorf("re-check: %w", err)
	}
	if now == gen {
		return errors.New("re-check: generation unchanged, the batch was not committed")
	}
	if p.applyID == nil {
		return fmt.Errorf("re-check: generation moved from %d to %d, and a batch without rules has no apply id to tell whose commit that was", gen, now)
	}
	ok, err := hasApplyID(nc, p.table, p.markChain, p.applyID)
	if err != nil {
		return fmt.Errorf("re-check: %w", err)
	}
	if !ok {
		return fmt.Errorf("re-check: generation moved from %d to %d but chain %q has no rule with our apply id %x: not committed, or replaced since",
			gen, now, p.markChain, p.applyID)
	}
	return nil
}

// verify checks that the table exists and that every set holds what we
// sent. google/nftables v0.3.0 could truncate element lists silently
// (DESIGN §5.1); this is the check that catches that class of bug.
func (c *Conn) verify(ctx context.Context, p *plan) error {
	return c.withSocket(ctx, func(nc *netlink.Conn) error {
		t, err := getTable(nc, p.table)
		if err != nil {
			return err
		}
		if t == nil {
			return ErrNoTable
		}
		if t.comment != p.comment {
			return fmt.Errorf("table comment is %q, want %q", t.comment, p.comment)
		}
		for _, sp := range p.sets {
			if sp.kelems <= readBackLimit && !p.chunksOnly {
				n, err := countElements(nc, p.table, sp.set.Name)
				if err != nil {
					return fmt.Errorf("set %q: %w", sp.set.Name, err)
				}
				if n != sp.kelems {
					return fmt.Errorf("set %q holds %d elements, %d were sent", sp.set.Name, n, sp.kelems)
				}
				continue
			}
			sent := 0
			for i, ch := range sp.chunks {
				keys := []kelem{ch.first}
				if ch.n > 1 {
					keys = append(keys, ch.last)
				}
				if err := getElements(nc, p.table, sp.set.Name, keys); err != nil {
					return fmt.Errorf("set %q: chunk %d of %d (elements %d-%d of %d sent): first or last element missing: %w",
						sp.set.Name, i+1, len(sp.chunks), sent, sent+ch.n-1, sp.kelems, err)
				}
				sent += ch.n
			}
		}
		return nil
	})
}

func setElemListAttrs(table, set string) []netlink.Attribute {
	return []netlink.Attribute{
		{Type: unix.NFTA_SET_ELEM_LIST_TABLE, Data: cstr(table)},
		{Type: unix.NFTA_SET_ELEM_LIST_SET, Data: cstr(set)},
	}
}

// countElements dumps a set and counts its elements (an interval set's
// start and end elements count separately, as they were sent).
func countElements(nc *netlink.Conn, table, set string) (int, error) {
	attrs, err := netlink.MarshalAttributes(setElemListAttrs(table, set))
	if err != nil {
		return 0, err
	}
	replies, err := dump(nc, netlink.Message{
		Header: netlink.Header{Type: msgType(unix.NFT_MSG_GETSETELEM)},
		Data:   append(nfgenmsg(unix.NFPROTO_INET, 0), attrs...),
	})
	if err != nil {
		return 0, fmt.Errorf("list elements: %w", err)
	}
	n := 0
	for _, r := range replies {
		if r.Header.Type != msgType(unix.NFT_MSG_NEWSETELEM) || len(r.Data) < 4 {
			continue
		}
		err := walkAttrs(r.Data[4:], func(typ uint16, data []byte) error {
			if typ&^unix.NLA_F_NESTED != unix.NFTA_SET_ELEM_LIST_ELEMENTS {
				return nil
			}
			return walkAttrs(data, func(uint16, []byte) error { n++; return nil })
		})
		if err != nil {
			return 0, fmt.Errorf("list elements: %w", err)
		}
	}
	return n, nil
}

// getElements looks keys up with a non-dump NFT_MSG_GETSETELEM; the kernel
// answers ENOENT if any is missing. An interval end element is looked up
// with its NFT_SET_ELEM_INTERVAL_END flag (the rbtree backend matches the
// key and the flag).
func getElements(nc *netlink.Conn, table, set string, keys []kelem) error {
	elems := make([]netlink.Attribute, 0, len(keys))
	for i, k := range keys {
		key, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NFTA_DATA_VALUE, Data: k.key}})
		if err != nil {
			return err
		}
		e := []netlink.Attribute{{Type: unix.NFTA_SET_ELEM_KEY | unix.NLA_F_NESTED, Data: key}}
		if k.end {
			e = append(e, netlink.Attribute{Type: unix.NFTA_SET_ELEM_FLAGS, Data: []byte{0, 0, 0, unix.NFT_SET_ELEM_INTERVAL_END}})
		}
		data, err := netlink.MarshalAttributes(e)
		if err != nil {
			return err
		}
		elems = append(elems, netlink.Attribute{Type: uint16(i+1) | unix.NLA_F_NESTED, Data: data})
	}
	list, err := netlink.MarshalAttributes(elems)
	if err != nil {
		return err
	}
	attrs, err := netlink.MarshalAttributes(append(setElemListAttrs(table, set),
		netlink.Attribute{Type: unix.NFTA_SET_ELEM_LIST_ELEMENTS | unix.NLA_F_NESTED, Data: list}))
	if err != nil {
		return err
	}
	replies, err := request(nc, netlink.Message{
		Header: netlink.Header{Type: msgType(unix.NFT_MSG_GETSETELEM)},
		Data:   append(nfgenmsg(unix.NFPROTO_INET, 0), attrs...),
	})
	if err != nil {
		return err
	}
	if len(replies) != len(keys) {
		return fmt.Errorf("%d answers for %d keys", len(replies), len(keys))
	}
	return nil
}
