//go:build linux

package nft

import (
	"context"
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
}

// Apply replaces inet <rs.Table> with rs in one transaction: at every
// instant the kernel holds either the previous table or the new one, and if
// the kernel refuses any part, the previous ruleset stays exactly as it was.
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
	stats, err := c.apply(ctx, rs)
	if err != nil {
		return nil, fmt.Errorf("apply table %q: %w", rs.Table, err)
	}
	return stats, nil
}

func (c *Conn) apply(ctx context.Context, rs *rules.Ruleset) (*ApplyStats, error) {
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
	// The table as it is now, to recognise our commit if its answer is
	// lost. Any change after the generation read makes the commit fail.
	prev, err := getTable(nc, rs.Table)
	if err != nil {
		return nil, err
	}
	p, err := buildPlan(rs)
	if err != nil {
		return nil, err
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
		if rerr := c.resolveUnknown(rs, gen, prev); rerr != nil {
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
	}, nil
}

// resolveUnknown decides, after lost acknowledgements, whether our batch
// was committed: not if the generation is still the one we sent (every
// commit changes it); yes if the table now is a new one (a delete and
// create gives it a new handle) with our comment. It returns nil for
// committed.
func (c *Conn) resolveUnknown(rs *rules.Ruleset, gen uint32, prev *tableInfo) error {
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
	t, err := getTable(nc, rs.Table)
	if err != nil {
		return fmt.Errorf("re-check: %w", err)
	}
	switch {
	case t == nil:
		return errors.New("re-check: the table does not exist")
	case prev != nil && t.handle == prev.handle:
		return errors.New("re-check: the table is still the previous one")
	case t.comment != rs.Comment:
		return fmt.Errorf("re-check: the table's comment is %q, not ours", t.comment)
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
			if sp.kelems <= readBackLimit {
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
