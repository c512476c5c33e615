//go:build linux

package nft

import (
	"bytes"
	"errors"
	"fmt"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"nftdns/rules"
)

// maxElemListBytes bounds the NFTA_SET_ELEM_LIST_ELEMENTS attribute of one
// NEWSETELEM message. Netlink attribute lengths are 16 bits: google/nftables
// v0.3.0 puts all elements of a SetAddElements call in one attribute, and
// above 64 KiB the length silently wraps and the kernel sees only part of
// the list (DESIGN §5.1). A margin below 65535 costs nothing.
const maxElemListBytes = 60 * 1024

// Kernel attributes google/nftables v0.3.0 and x/sys/unix do not name.
const (
	nftaTableHandle   = 4  // NFTA_TABLE_HANDLE, u64
	nftaTableUserdata = 6  // NFTA_TABLE_USERDATA
	nftaChainUserdata = 12 // NFTA_CHAIN_USERDATA
)

// msgType is an nf_tables netlink message type.
func msgType(t uint16) netlink.HeaderType {
	return netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | t)
}

// nfgenmsg is the netfilter header in front of every message's attributes.
func nfgenmsg(family uint8, resID uint16) []byte {
	return []byte{family, unix.NFNETLINK_V0, byte(resID >> 8), byte(resID)}
}

// batchMsg is one message of a transaction and what it does, for errors.
type batchMsg struct {
	msg   netlink.Message
	desc  string
	elems int // for NEWSETELEM: elements in the list, to check the encoding
}

// kelem is one element as the kernel stores it: interval sets hold a start
// element and an end element (flag NFT_SET_ELEM_INTERVAL_END) per range.
type kelem struct {
	key []byte
	end bool
}

// chunk is one NEWSETELEM message's worth of a set's elements.
type chunk struct {
	first, last kelem
	n           int // kernel elements
}

// setPlan is a set as sent: its batch id and its element chunks.
type setPlan struct {
	set    *rules.Set
	id     uint32
	attrs  []netlink.Attribute // of its NEWSET message
	shape  setShape
	kelems int // kernel elements sent (start + end elements for intervals)
	chunks []chunk
}

// plan is a complete transaction for one ruleset.
type plan struct {
	table    string
	comment  string // the table's comment after the commit
	inPlace  bool   // updates an existing table instead of replacing it
	msgs     []batchMsg
	sets     []*setPlan
	elements int // rules elements
	bytes    int // bytes of msgs, netlink headers included

	// The last rule carries applyID in its user data; nil if there are no
	// rules.
	applyID   []byte
	markChain string

	// chunksOnly: verify looks up the first and last element of each
	// chunk sent, even in small sets (an incremental plan sends only some
	// of a set's elements).
	chunksOnly bool
}

// recorder is a fake netlink peer for google/nftables: it keeps the messages
// of each batch the library flushes and acknowledges each of them, so the
// library serves as a message encoder and nothing reaches the kernel.
type recorder struct{ msgs []netlink.Message }

func (r *recorder) dial(req []netlink.Message) ([]netlink.Message, error) {
	if req == nil {
		// The library reads one acknowledgement per message.
		return []netlink.Message{{Header: netlink.Header{Type: netlink.Error}, Data: make([]byte, 4+16)}}, nil
	}
	if len(req) < 2 {
		return nil, fmt.Errorf("recorder: unexpected request of %d messages", len(req))
	}
	// Drop the library's batch begin and end: we send our own.
	r.msgs = append(r.msgs, req[1:len(req)-1]...)
	return nil, nil
}

type pendingCall struct {
	desc  string
	elems int
}

// builder assembles a plan from our own messages and messages recorded from
// google/nftables, in order.
type builder struct {
	p       *plan
	rec     *recorder
	lib     *nftables.Conn
	pending []pendingCall // library calls not yet flushed
}

func newBuilder(table, comment string) (*builder, error) {
	rec := &recorder{}
	lib, err := nftables.New(nftables.WithTestDial(rec.dial))
	if err != nil {
		return nil, err
	}
	return &builder{p: &plan{table: table, comment: comment}, rec: rec, lib: lib}, nil
}

// add appends one of our own messages, after any pending library messages.
func (b *builder) add(desc string, typ uint16, flags netlink.HeaderFlags, attrs []netlink.Attribute) error {
	return b.addFamily(unix.NFPROTO_INET, desc, typ, flags, attrs)
}

// addFamily is add for a table of another family.
func (b *builder) addFamily(family uint8, desc string, typ uint16, flags netlink.HeaderFlags, attrs []netlink.Attribute) error {
	if err := b.sync(); err != nil {
		return err
	}
	data, err := netlink.MarshalAttributes(attrs)
	if err != nil {
		return fmt.Errorf("%s: %w", desc, err)
	}
	b.p.msgs = append(b.p.msgs, batchMsg{
		msg: netlink.Message{
			Header: netlink.Header{Type: msgType(typ), Flags: netlink.Request | netlink.Acknowledge | flags},
			Data:   append(nfgenmsg(family, 0), data...),
		},
		desc: desc,
	})
	return nil
}

// auxFamilies are the families of the aux tables, in batch order.
var auxFamilies = []struct {
	fam   rules.Family
	proto uint8
	kw    string
	lib   nftables.TableFamily
}{
	{rules.IPv4, unix.NFPROTO_IPV4, "ip", nftables.TableFamilyIPv4},
	{rules.IPv6, unix.NFPROTO_IPV6, "ip6", nftables.TableFamilyIPv6},
}

// dropAuxTables queues the deletion of the ip and ip6 tables named table
// (of the families in only, or of both if only is nil), whether or not
// they exist (add, then delete).
func (b *builder) dropAuxTables(table string, only map[rules.Family]bool) error {
	name := netlink.Attribute{Type: unix.NFTA_TABLE_NAME, Data: cstr(table)}
	for _, f := range auxFamilies {
		if only != nil && !only[f.fam] {
			continue
		}
		if err := b.addFamily(f.proto, fmt.Sprintf("add table %s %s", f.kw, table), unix.NFT_MSG_NEWTABLE, netlink.Create,
			[]netlink.Attribute{name, {Type: unix.NFTA_TABLE_FLAGS, Data: []byte{0, 0, 0, 0}}}); err != nil {
			return err
		}
		if err := b.addFamily(f.proto, fmt.Sprintf("delete table %s %s", f.kw, table), unix.NFT_MSG_DELTABLE, 0,
			[]netlink.Attribute{name}); err != nil {
			return err
		}
	}
	return nil
}

// auxTables queues the replacement of the aux tables (the ip and ip6
// tables of the same name that send in-kernel answers): they are small and
// hold no state, so an apply deletes those that exist (present) and those
// rs needs, and creates those rs needs, in the same transaction. A ruleset
// without answers on a box without aux tables sends nothing for them.
func (b *builder) auxTables(rs *rules.Ruleset, present map[rules.Family]bool) error {
	drop := map[rules.Family]bool{}
	for f, ok := range present {
		drop[f] = ok
	}
	for _, a := range rs.Aux {
		drop[a.Family] = true
	}
	if err := b.dropAuxTables(rs.Table, drop); err != nil {
		return err
	}
	for _, a := range rs.Aux {
		var lf nftables.TableFamily
		var proto uint8
		var kw string
		for _, f := range auxFamilies {
			if f.fam == a.Family {
				lf, proto, kw = f.lib, f.proto, f.kw
			}
		}
		if kw == "" {
			return fmt.Errorf("aux table of family %d", a.Family)
		}
		attrs := []netlink.Attribute{
			{Type: unix.NFTA_TABLE_NAME, Data: cstr(rs.Table)},
			{Type: unix.NFTA_TABLE_FLAGS, Data: []byte{0, 0, 0, 0}},
		}
		if rs.Comment != "" {
			ud, err := commentUdata(udataTableComment, rs.Comment)
			if err != nil {
				return err
			}
			attrs = append(attrs, netlink.Attribute{Type: nftaTableUserdata, Data: ud})
		}
		if err := b.addFamily(proto, fmt.Sprintf("create table %s %s", kw, rs.Table), unix.NFT_MSG_NEWTABLE, netlink.Create|netlink.Excl, attrs); err != nil {
			return err
		}
		table := &nftables.Table{Name: rs.Table, Family: lf}
		for _, ch := range a.Chains {
			nc, err := libChain(table, ch)
			if err != nil {
				return fmt.Errorf("%s chain %q: %w", kw, ch.Name, err)
			}
			if err := b.viaLib(fmt.Sprintf("add chain %s %q", kw, ch.Name), func(c *nftables.Conn) error {
				c.AddChain(nc)
				return nil
			}); err != nil {
				return err
			}
			for i, r := range ch.Rules {
				desc := fmt.Sprintf("rule %d in %s chain %q (%s)", i, kw, ch.Name, r.Text)
				exprs, err := convertExprs(r.Exprs, nil)
				if err != nil {
					return fmt.Errorf("%s: %w", desc, err)
				}
				rule := &nftables.Rule{Table: table, Chain: nc, Exprs: exprs}
				if err := b.viaLib(desc, func(c *nftables.Conn) error {
					c.AddRule(rule)
					return nil
				}); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// viaLib notes that fn queued exactly one message in the library.
func (b *builder) viaLib(desc string, fn func(c *nftables.Conn) error) error {
	if err := fn(b.lib); err != nil {
		return fmt.Errorf("%s: %w", desc, err)
	}
	b.pending = append(b.pending, pendingCall{desc: desc})
	return nil
}

// sync flushes the library into the recorder and appends its messages.
func (b *builder) sync() error {
	if len(b.pending) == 0 {
		return nil
	}
	b.rec.msgs = b.rec.msgs[:0]
	if err := b.lib.Flush(); err != nil {
		return fmt.Errorf("encode %s: %w", b.pending[0].desc, err)
	}
	if len(b.rec.msgs) != len(b.pending) {
		return fmt.Errorf("encode: google/nftables produced %d messages for %d calls", len(b.rec.msgs), len(b.pending))
	}
	for i, m := range b.rec.msgs {
		// The recording connection numbered them; the real one will again.
		m.Header.Length, m.Header.Sequence, m.Header.PID = 0, 0, 0
		// AddRule asks for an echo of every new rule: a reply per rule we do
		// not read, filling the receive buffer.
		m.Header.Flags &^= unix.NLM_F_ECHO
		// Our sets are new or flushed in this batch: with NLM_F_EXCL an
		// element given twice is refused (EEXIST) instead of silently
		// merged, so the kernel holds exactly what was sent and the
		// verification's counts mean something.
		if m.Header.Type == msgType(unix.NFT_MSG_NEWSETELEM) {
			m.Header.Flags |= netlink.Excl
		}
		b.p.msgs = append(b.p.msgs, batchMsg{msg: m, desc: b.pending[i].desc, elems: b.pending[i].elems})
	}
	b.pending = b.pending[:0]
	return nil
}

// appendAttr adds an attribute to the last message (for what v0.3.0 cannot
// express, such as a chain comment).
func (b *builder) appendAttr(a netlink.Attribute) error {
	if err := b.sync(); err != nil {
		return err
	}
	data, err := netlink.MarshalAttributes([]netlink.Attribute{a})
	if err != nil {
		return err
	}
	m := &b.p.msgs[len(b.p.msgs)-1].msg
	m.Data = append(m.Data, data...)
	return nil
}

// buildPlan translates a ruleset into one transaction that creates the
// table, replacing any table of that name (see buildPlanFor).
func buildPlan(rs *rules.Ruleset) (*plan, error) { return buildPlanFor(rs, nil, nil) }

// buildPlanFor translates a ruleset into one transaction.
//
// With cur nil it replaces the table: add it (a no-op if it exists), delete
// it with everything in it, create it again, then counters, chains, sets
// with their elements, rules. Apply uses this when the table does not
// exist.
//
// With cur, the existing table as read after the generation id, it updates
// the table in place and never deletes a base chain whose hook, type and
// priority stay the same: deleting a base chain unregisters its netfilter
// hook and the new one registers another, and a new conntrack flow whose
// first packet passes the nat hook in between gets a null NAT binding for
// its whole life (the packet reaches the box itself instead of being
// DNATed). The batch flushes every chain's rules; of the sets that keep
// their shape, leaves the small ones whose elements stay untouched, updates
// the other small ones by their difference (cur holds their elements; a
// changed interval set is flushed) and flushes the big ones; deletes the
// sets that do not keep their shape; deletes the chains that go or
// change and the objects that go; then adds what is missing, the elements
// and all rules. Named counters that stay keep their values.
//
// applyID, if not nil, goes into the user data of the batch's last rule so
// that Apply can recognise its commit after lost acknowledgements.
func buildPlanFor(rs *rules.Ruleset, cur *tableState, applyID []byte) (*plan, error) {
	return buildPlanAux(rs, cur, applyID, nil)
}

// buildPlanAux is buildPlanFor that also replaces the aux tables (see
// auxTables); auxPresent are the families whose aux table exists now.
func buildPlanAux(rs *rules.Ruleset, cur *tableState, applyID []byte, auxPresent map[rules.Family]bool) (*plan, error) {
	if rs == nil || rs.Table == "" {
		return nil, errors.New("ruleset has no table name")
	}
	if _, err := commentUdata(udataTableComment, rs.Comment); err != nil {
		return nil, fmt.Errorf("table %q: %w", rs.Table, err)
	}
	comment := rs.Comment
	if cur != nil {
		// The kernel ignores NFTA_TABLE_USERDATA for an existing table
		// (nf_tables_updtable, seen on Linux 6.18): the comment stays.
		comment = cur.table.comment
	}
	b, err := newBuilder(rs.Table, comment)
	if err != nil {
		return nil, err
	}
	b.p.inPlace = cur != nil
	table := &nftables.Table{Name: rs.Table, Family: nftables.TableFamilyINet}

	// Check and convert chains and sets first: the in-place diff compares
	// them with what exists.
	chains := make(map[string]*nftables.Chain, len(rs.Chains))
	for _, ch := range rs.Chains {
		if ch == nil || ch.Name == "" {
			return nil, errors.New("chain without a name")
		}
		if chains[ch.Name] != nil {
			return nil, fmt.Errorf("chain %q defined twice", ch.Name)
		}
		nc, err := libChain(table, ch)
		if err != nil {
			return nil, fmt.Errorf("chain %q: %w", ch.Name, err)
		}
		chains[ch.Name] = nc
	}
	ngMods := numgenMaps(rs)
	sets := make(map[string]*setPlan, len(rs.Sets))
	for i, s := range rs.Sets {
		if s == nil || s.Name == "" {
			return nil, fmt.Errorf("set %d has no name", i)
		}
		if sets[s.Name] != nil {
			return nil, fmt.Errorf("set %q defined twice", s.Name)
		}
		// Ids are per transaction; numbering them here rather than with the
		// library's global counter keeps concurrent builds independent.
		sp := &setPlan{set: s, id: uint32(i + 1)}
		if sp.attrs, sp.shape, err = setAttrs(table, sp, ngMods[s.Name]); err != nil {
			return nil, fmt.Errorf("set %q: %w", s.Name, err)
		}
		sets[s.Name] = sp
		b.p.sets = append(b.p.sets, sp)
		b.p.elements += len(s.Elements)
	}

	var keep *kept
	if cur == nil {
		err = b.replaceTable(rs)
	} else {
		keep, err = b.clearTable(table, rs, cur, chains, sets)
	}
	if err != nil {
		return nil, err
	}

	for _, name := range rs.Counters {
		if keep != nil && keep.counters[name] {
			continue
		}
		if err := b.viaLib(fmt.Sprintf("add counter %q", name), func(c *nftables.Conn) error {
			c.AddObj(&nftables.CounterObj{Table: table, Name: name})
			return nil
		}); err != nil {
			return nil, err
		}
	}

	// All chains, without rules, before the sets: verdict map elements that
	// jump to a chain need it to exist, and rules can then jump to any
	// chain. (rs.Chains has regular chains before base chains.)
	for _, ch := range rs.Chains {
		nc := chains[ch.Name]
		if keep != nil {
			if old := keep.chains[ch.Name]; old != nil {
				if old.base && old.policy != chainPolicyAccept {
					// NEWCHAIN for an existing base chain with the same
					// hook only updates its policy (nf_tables_updchain).
					if err := b.viaLib(fmt.Sprintf("update chain %q", ch.Name), func(c *nftables.Conn) error {
						c.AddChain(nc)
						return nil
					}); err != nil {
						return nil, err
					}
				}
				continue
			}
		}
		if err := b.newChain(nc, ch); err != nil {
			return nil, err
		}
	}
	// Sets, and the elements that only change, before the rules; the
	// elements of new and flushed sets after them (fill).
	var fill []*setPlan
	for _, sp := range b.p.sets {
		add, diffed := []rules.Element(nil), false
		if keep != nil {
			add, diffed = keep.diffs[sp.set.Name]
		}
		switch {
		case diffed:
			// Updated by its difference: add what is new. The set then
			// holds all of its elements, which verify counts.
			if len(add) > 0 {
				err = b.addElements(table, sp, add)
			}
			sp.chunks, sp.kelems = nil, kernelElems(sp.set)
		case keep != nil && keep.sets[sp.set.Name]:
			// Flushed above: refilled after the rules.
			fill = append(fill, sp)
		default:
			err = b.add(fmt.Sprintf("add set %q", sp.set.Name), unix.NFT_MSG_NEWSET, netlink.Create, sp.attrs)
			fill = append(fill, sp)
		}
		if err != nil {
			return nil, fmt.Errorf("set %q: %w", sp.set.Name, err)
		}
	}

	// The last rule of the batch carries the apply id.
	lastChain, lastRule := -1, -1
	for ci, ch := range rs.Chains {
		if len(ch.Rules) > 0 {
			lastChain, lastRule = ci, len(ch.Rules)-1
		}
	}
	for ci, ch := range rs.Chains {
		for i, r := range ch.Rules {
			var ud []byte
			if ci == lastChain && i == lastRule && applyID != nil {
				ud = userdata.Append(nil, udataRuleApplyID, applyID)
				b.p.applyID, b.p.markChain = applyID, ch.Name
			}
			if err := b.addRule(table, chains[ch.Name], ch, i, r, sets, ud); err != nil {
				return nil, err
			}
		}
	}
	// A rule that looks a map up makes the kernel walk every element of it
	// to validate it for that rule's chain (nf_tables_bind_set), once per
	// chain: with a suffix map looked up from 510 length chains, filling
	// maps before the rules cost most of a big apply. Filled after, each
	// element is validated once, as it comes.
	for _, sp := range fill {
		if err := b.addElements(table, sp, sp.set.Elements); err != nil {
			return nil, fmt.Errorf("set %q: %w", sp.set.Name, err)
		}
	}
	if err := b.auxTables(rs, auxPresent); err != nil {
		return nil, err
	}
	if err := b.sync(); err != nil {
		return nil, err
	}
	for _, m := range b.p.msgs {
		if err := checkEncoding(m); err != nil {
			return nil, fmt.Errorf("%s: %w", m.desc, err)
		}
		b.p.bytes += 16 + len(m.msg.Data)
	}
	return b.p, nil
}

// newChain queues NEWCHAIN for ch (converted as nc), with its comment.
func (b *builder) newChain(nc *nftables.Chain, ch *rules.Chain) error {
	if err := b.viaLib(fmt.Sprintf("add chain %q", ch.Name), func(c *nftables.Conn) error {
		c.AddChain(nc)
		return nil
	}); err != nil {
		return err
	}
	if ch.Comment == "" {
		return nil
	}
	ud, err := commentUdata(udataChainComment, ch.Comment)
	if err != nil {
		return fmt.Errorf("chain %q: %w", ch.Name, err)
	}
	return b.appendAttr(netlink.Attribute{Type: nftaChainUserdata, Data: ud})
}

// addChain converts ch and queues its NEWCHAIN.
func (b *builder) addChain(table *nftables.Table, ch *rules.Chain) (*nftables.Chain, error) {
	nc, err := libChain(table, ch)
	if err != nil {
		return nil, fmt.Errorf("chain %q: %w", ch.Name, err)
	}
	return nc, b.newChain(nc, ch)
}

// addRule queues NEWRULE for rule i of ch (converted as nc), with user
// data ud if not nil.
func (b *builder) addRule(table *nftables.Table, nc *nftables.Chain, ch *rules.Chain, i int, r rules.Rule, sets map[string]*setPlan, ud []byte) error {
	desc := fmt.Sprintf("rule %d in chain %q", i, ch.Name)
	if r.Text != "" {
		desc += fmt.Sprintf(" (%s)", r.Text)
	}
	exprs, err := convertExprs(r.Exprs, sets)
	if err != nil {
		return fmt.Errorf("%s: %w", desc, err)
	}
	rule := &nftables.Rule{Table: table, Chain: nc, Exprs: exprs, UserData: ud}
	return b.viaLib(desc, func(c *nftables.Conn) error {
		c.AddRule(rule)
		return nil
	})
}

// replaceTable queues the start of a replacing transaction: add the table
// (a no-op if it exists), delete it with everything in it, create it.
func (b *builder) replaceTable(rs *rules.Ruleset) error {
	tableName := netlink.Attribute{Type: unix.NFTA_TABLE_NAME, Data: cstr(rs.Table)}
	tableFlags := netlink.Attribute{Type: unix.NFTA_TABLE_FLAGS, Data: []byte{0, 0, 0, 0}}
	// NLM_F_CREATE without NLM_F_EXCL: succeeds whether or not the table
	// exists, so that the delete after it never fails with ENOENT.
	if err := b.add(fmt.Sprintf("add table inet %s", rs.Table), unix.NFT_MSG_NEWTABLE, netlink.Create,
		[]netlink.Attribute{tableName, tableFlags}); err != nil {
		return err
	}
	if err := b.add(fmt.Sprintf("delete table inet %s", rs.Table), unix.NFT_MSG_DELTABLE, 0,
		[]netlink.Attribute{tableName}); err != nil {
		return err
	}
	attrs := []netlink.Attribute{tableName, tableFlags}
	if rs.Comment != "" {
		ud, err := commentUdata(udataTableComment, rs.Comment)
		if err != nil {
			return fmt.Errorf("table %q: %w", rs.Table, err)
		}
		attrs = append(attrs, netlink.Attribute{Type: nftaTableUserdata, Data: ud})
	}
	return b.add(fmt.Sprintf("create table inet %s", rs.Table), unix.NFT_MSG_NEWTABLE, netlink.Create|netlink.Excl, attrs)
}

// kept is what an in-place update keeps of the existing table.
type kept struct {
	chains   map[string]*chainInfo // with their hooks
	sets     map[string]bool       // same shape: flushed or updated, not re-created
	counters map[string]bool       // with their values

	// Of the kept sets, the small ones updated by their difference: the
	// elements to add (nil: none, the set stays untouched); a kept set not
	// in diffs was flushed and is refilled.
	diffs map[string][]rules.Element
}

// smallSetLimit is the largest set, in kernel elements (an interval's start
// and end count separately), that an in-place update reads and updates by
// its difference instead of flushing and refilling it. Below readBackLimit,
// so that verify counts these sets.
const smallSetLimit = 4096

// diffable reports whether the new set s is small enough, and of a kind,
// to be updated by its difference: not a verdict map (its elements hold
// references to chains that the same batch may delete and re-create).
// Apply reads the existing elements of such a set after the generation id;
// that read is cheap for small sets, but an existing big set that a new
// ruleset makes small is read in full once (DESIGN §5.6: ~37 µs an
// element) before readElements gives up on it.
func diffable(s *rules.Set) bool {
	return s != nil && s.DataType != rules.TypeVerdict && kernelElems(s) <= smallSetLimit
}

// kernelElems is the number of kernel elements a set's elements make.
func kernelElems(s *rules.Set) int {
	n := len(s.Elements)
	if s.Interval {
		for i := range s.Elements {
			if len(s.Elements[i].KeyEnd) > 0 {
				n++
			}
		}
	}
	return n
}

// wantElems gives the kernel elements of s as readElements reports them,
// or false if they cannot be compared (the same kernel element twice: the
// kernel refuses that, and a full refill lets it).
func wantElems(s *rules.Set) (map[string]string, bool) {
	out := make(map[string]string, len(s.Elements))
	put := func(key []byte, end bool, data []byte) bool {
		id := elemID(key, end)
		if _, dup := out[id]; dup {
			return false
		}
		out[id] = string(data)
		return true
	}
	for i := range s.Elements {
		e := &s.Elements[i]
		var data []byte
		if s.IsMap() {
			data = e.Data
		}
		if !put(e.Key, false, data) {
			return nil, false
		}
		if s.Interval && len(e.KeyEnd) > 0 && !put(e.KeyEnd, true, nil) {
			return nil, false
		}
	}
	return out, true
}

// checkElements runs the element checks of addElements on a set whose
// elements are not all sent, so that a bad element fails the same way
// whether or not the set changed.
func checkElements(table *nftables.Table, sp *setPlan) error {
	b, err := newBuilder(table.Name, "")
	if err != nil {
		return err
	}
	tmp := *sp
	tmp.chunks, tmp.kelems = nil, 0
	return b.addElements(table, &tmp, sp.set.Elements)
}

// delElements queues DELSETELEM messages for the given keys of a set that
// is not an interval set (see delKelems).
func (b *builder) delElements(table, set string, keys [][]byte) error {
	ks := make([]kelem, len(keys))
	for i, k := range keys {
		ks[i] = kelem{key: k}
	}
	return b.delKelems(table, set, ks)
}

// setUpdate queues the update of a kept set with the shape of sp whose
// existing elements are cur, and reports whether it did: nothing if the
// elements are the same, DELSETELEM for the elements that go (and those
// whose data changes) otherwise, and it returns the elements to add. It
// does nothing and returns false for a set it cannot update that way
// (elements not read, too big, an interval set that changed): that one is
// flushed and refilled.
func (b *builder) setUpdate(table *nftables.Table, sp *setPlan, cur map[string]string) ([]rules.Element, bool, error) {
	s := sp.set
	if cur == nil || !diffable(s) {
		return nil, false, nil
	}
	want, ok := wantElems(s)
	if !ok {
		return nil, false, nil
	}
	if err := checkElements(table, sp); err != nil {
		return nil, false, fmt.Errorf("set %q: %w", s.Name, err)
	}
	same := len(want) == len(cur)
	if same {
		for id, d := range want {
			if cd, ok := cur[id]; !ok || cd != d {
				same = false
				break
			}
		}
	}
	if same {
		return nil, true, nil
	}
	if s.Interval {
		// Ranges could be diffed too, but the rbtree backend's overlap
		// checks on partial updates are not worth the risk: a changed
		// interval set is flushed and refilled.
		return nil, false, nil
	}
	var del [][]byte
	for id, d := range cur {
		if wd, ok := want[id]; !ok || wd != d {
			del = append(del, []byte(id[:len(id)-1]))
		}
	}
	// The kernel's order does not matter; a stable one makes batches
	// reproducible.
	slices.SortFunc(del, bytes.Compare)
	var add []rules.Element
	for i := range s.Elements {
		e := &s.Elements[i]
		id := elemID(e.Key, false)
		var data []byte
		if s.IsMap() {
			data = e.Data
		}
		if cd, ok := cur[id]; !ok || cd != string(data) {
			add = append(add, *e)
		}
	}
	if err := b.delElements(table.Name, s.Name, del); err != nil {
		return nil, false, fmt.Errorf("set %q: %w", s.Name, err)
	}
	return add, true, nil
}

// clearTable queues the first half of an in-place update: it empties the
// existing table down to what the new ruleset keeps. Order matters: rules
// go first, which drops every reference they hold to sets, chains and
// objects; then sets (flushing or deleting a verdict map drops its
// elements' references to chains); then chains and objects, which nothing
// references any more (the kernel refuses to delete a referenced one with
// EBUSY).
func (b *builder) clearTable(table *nftables.Table, rs *rules.Ruleset, cur *tableState, chains map[string]*nftables.Chain, sets map[string]*setPlan) (*kept, error) {
	k := &kept{chains: map[string]*chainInfo{}, sets: map[string]bool{}, counters: map[string]bool{}, diffs: map[string][]rules.Element{}}
	// Flags 0 wakes a dormant table up, as re-creating it did; the kernel
	// ignores the user data of an existing table, so none is sent.
	if err := b.add(fmt.Sprintf("add table inet %s", rs.Table), unix.NFT_MSG_NEWTABLE, netlink.Create, []netlink.Attribute{
		{Type: unix.NFTA_TABLE_NAME, Data: cstr(rs.Table)},
		{Type: unix.NFTA_TABLE_FLAGS, Data: []byte{0, 0, 0, 0}},
	}); err != nil {
		return nil, err
	}
	tableAttr := func(typ uint16) netlink.Attribute { return netlink.Attribute{Type: typ, Data: cstr(rs.Table)} }
	for _, c := range cur.chains {
		// DELRULE without a handle: every rule of the chain (nft's flush
		// chain; google/nftables FlushChain).
		if err := b.add(fmt.Sprintf("flush chain %q", c.name), unix.NFT_MSG_DELRULE, 0, []netlink.Attribute{
			tableAttr(unix.NFTA_RULE_TABLE), {Type: unix.NFTA_RULE_CHAIN, Data: cstr(c.name)},
		}); err != nil {
			return nil, err
		}
	}
	for _, s := range cur.sets {
		if sp := sets[s.name]; sp != nil && sp.shape.matches(s) {
			add, ok, err := b.setUpdate(table, sp, s.elems)
			if err != nil {
				return nil, err
			}
			if ok {
				// Small and read: left alone if its elements stay (the
				// common case for the address sets the NAT rules look
				// up), otherwise updated by its difference.
				k.sets[s.name] = true
				k.diffs[s.name] = add
				continue
			}
			if kernelElems(sp.set) <= smallSetLimit {
				// DELSETELEM without elements: all of them (nft_set_flush;
				// google/nftables FlushSet). The elements sent later in
				// this batch are new in the next generation, so even the
				// same keys do not collide with the flushed ones.
				k.sets[s.name] = true
				if err := b.add(fmt.Sprintf("flush set %q", s.name), unix.NFT_MSG_DELSETELEM, 0, []netlink.Attribute{
					tableAttr(unix.NFTA_SET_ELEM_LIST_TABLE), {Type: unix.NFTA_SET_ELEM_LIST_SET, Data: cstr(s.name)},
				}); err != nil {
					return nil, err
				}
				continue
			}
			// A big one is deleted and created again below, with a new
			// handle, rather than flushed: flushed elements stay in the
			// set until the commit, and every rule that binds a map walks
			// all of its elements, flushed ones included
			// (nf_tables_bind_set). With the suffix map bound from 510
			// chains, that walk was most of a re-apply.
		}
		// Gone, or its shape changed (the kernel cannot change a set's key,
		// data, flags or user data: a NEWSET for an existing set of another
		// shape fails with EEXIST), or refilled: delete it; it is created
		// again under the same name in this batch.
		if err := b.add(fmt.Sprintf("delete set %q", s.name), unix.NFT_MSG_DELSET, 0, []netlink.Attribute{
			tableAttr(unix.NFTA_SET_TABLE), {Type: unix.NFTA_SET_NAME, Data: cstr(s.name)},
		}); err != nil {
			return nil, err
		}
	}
	want := make(map[string]*rules.Chain, len(rs.Chains))
	for _, ch := range rs.Chains {
		want[ch.Name] = ch
	}
	for _, c := range cur.chains {
		if w := want[c.name]; w != nil && sameChain(c, w, chains[c.name]) {
			k.chains[c.name] = c
			continue
		}
		if err := b.add(fmt.Sprintf("delete chain %q", c.name), unix.NFT_MSG_DELCHAIN, 0, []netlink.Attribute{
			tableAttr(unix.NFTA_CHAIN_TABLE), {Type: unix.NFTA_CHAIN_NAME, Data: cstr(c.name)},
		}); err != nil {
			return nil, err
		}
	}
	wantCounters := make(map[string]bool, len(rs.Counters))
	for _, n := range rs.Counters {
		wantCounters[n] = true
	}
	for _, o := range cur.objs {
		if o.typ == unix.NFT_OBJECT_COUNTER && wantCounters[o.name] {
			k.counters[o.name] = true
			continue
		}
		if err := b.add(fmt.Sprintf("delete object %q (type %d)", o.name, o.typ), unix.NFT_MSG_DELOBJ, 0, []netlink.Attribute{
			tableAttr(unix.NFTA_OBJ_TABLE), {Type: unix.NFTA_OBJ_NAME, Data: cstr(o.name)},
			{Type: unix.NFTA_OBJ_TYPE, Data: binaryutil.BigEndian.PutUint32(o.typ)},
		}); err != nil {
			return nil, err
		}
	}
	return k, nil
}

// sameChain reports whether the existing chain c can stay for w. A base
// chain stays if its hook, type and priority do (its hook registration is
// what must not go away); its comment cannot change in place (the kernel
// ignores NFTA_CHAIN_USERDATA for an existing chain) and stays as it was.
// A regular chain has no hook: when its comment changes it is simply
// deleted and re-created.
func sameChain(c *chainInfo, w *rules.Chain, lc *nftables.Chain) bool {
	if w.Hook == rules.HookNone {
		return !c.base && c.comment == w.Comment
	}
	return c.base && lc.Hooknum != nil && lc.Priority != nil &&
		c.hook == uint32(*lc.Hooknum) && c.prio == int32(*lc.Priority) && c.typ == string(lc.Type)
}

func cstr(s string) []byte { return append([]byte(s), 0) }

func libChain(t *nftables.Table, ch *rules.Chain) (*nftables.Chain, error) {
	c := &nftables.Chain{Name: ch.Name, Table: t}
	if ch.Hook == rules.HookNone {
		if ch.Type != "" {
			return nil, errors.New("a chain type needs a hook")
		}
		return c, nil
	}
	hooks := map[rules.Hook]*nftables.ChainHook{
		rules.HookPrerouting:  nftables.ChainHookPrerouting,
		rules.HookInput:       nftables.ChainHookInput,
		rules.HookForward:     nftables.ChainHookForward,
		rules.HookOutput:      nftables.ChainHookOutput,
		rules.HookPostrouting: nftables.ChainHookPostrouting,
	}
	h, ok := hooks[ch.Hook]
	if !ok {
		return nil, fmt.Errorf("unknown hook %q", ch.Hook)
	}
	switch ch.Type {
	case rules.ChainFilter, "":
		c.Type = nftables.ChainTypeFilter
	case rules.ChainNAT:
		c.Type = nftables.ChainTypeNAT
	default:
		return nil, fmt.Errorf("unknown chain type %q", ch.Type)
	}
	accept := nftables.ChainPolicyAccept
	c.Hooknum = h
	c.Priority = nftables.ChainPriorityRef(nftables.ChainPriority(ch.Priority))
	c.Policy = &accept
	return c, nil
}

// setShape is what the kernel cannot change of an existing set: a NEWSET
// for a set of that name and another key, data or flags fails with EEXIST
// (nft_set_is_same), and one with other user data is ignored.
type setShape struct {
	flags, keyType, keyLen, dataType, dataLen uint32
	udata                                     []byte
}

// matches reports whether the existing set s has the shape. The kernel
// reports a verdict map's data length as sizeof(struct nft_verdict) where
// we send 0, so that one is not compared.
func (sh setShape) matches(s *setInfo) bool {
	if sh.flags != s.flags || sh.keyType != s.keyType || sh.keyLen != s.keyLen || !bytes.Equal(sh.udata, s.udata) {
		return false
	}
	if sh.flags&unix.NFT_SET_MAP == 0 {
		return true
	}
	return sh.dataType == s.dataType && (sh.dataType == unix.NFT_DATA_VERDICT || sh.dataLen == s.dataLen)
}

// setAttrs checks a set and returns the attributes of its NEWSET message.
//
// The NEWSET message is ours: v0.3.0's AddSet cannot carry typeof user data
// (so nft would print "type 0" for raw keys) and does not know a map's data
// byte order.
func setAttrs(table *nftables.Table, sp *setPlan, ngMod uint32) ([]netlink.Attribute, setShape, error) {
	var none setShape
	s := sp.set
	if s.KeyLen == 0 || s.KeyLen > 64 {
		// The kernel's limit is NFT_DATA_VALUE_MAXLEN, 64 bytes.
		return nil, none, fmt.Errorf("key length %d, want 1-64 bytes", s.KeyLen)
	}
	key, err := lookupDatatype(s.KeyType, len(s.Typeof))
	if err != nil {
		return nil, none, fmt.Errorf("key: %w", err)
	}
	if s.KeyType == rules.TypeVerdict {
		return nil, none, errors.New("a verdict cannot be a key")
	}
	if key.len != 0 && key.len != s.KeyLen {
		return nil, none, fmt.Errorf("key length %d, %s keys are %d bytes", s.KeyLen, typeName(s.KeyType), key.len)
	}
	concat := len(s.Typeof) > 1 || s.KeyType == rules.TypeIPv4AddrPort || s.KeyType == rules.TypeIPv6AddrPort
	if s.Interval && concat {
		// Would need NFT_SET_CONCAT, field lengths and per-element KEY_END
		// (the pipapo backend); nothing in nftdns needs it yet.
		return nil, none, errors.New("interval sets with concatenated keys are not supported")
	}

	var flags uint32
	if s.Interval {
		flags |= unix.NFT_SET_INTERVAL
	}
	var data datatype
	if s.IsMap() {
		flags |= unix.NFT_SET_MAP
		if data, err = lookupDatatype(s.DataType, 0); err != nil {
			return nil, none, fmt.Errorf("data: %w", err)
		}
		if s.DataType == rules.TypeVerdict {
			if s.DataLen != 0 {
				return nil, none, fmt.Errorf("verdict map with data length %d", s.DataLen)
			}
		} else {
			if s.DataLen == 0 || s.DataLen > 64 {
				return nil, none, fmt.Errorf("data length %d, want 1-64 bytes", s.DataLen)
			}
			if data.len != 0 && data.len != s.DataLen {
				return nil, none, fmt.Errorf("data length %d, %s data is %d bytes", s.DataLen, typeName(s.DataType), data.len)
			}
		}
	}

	// A 4-byte integer that nft is told is a "meta mark" (see keyTypeof)
	// gets the mark datatype too: nft prints a rule's comparison with a
	// map's data by the set's datatype, and for "integer" data it prints
	// "[invalid type]" and cannot read the listing back.
	mark := nftables.TypeMark.GetNFTMagic()
	if s.KeyType == rules.TypeInteger && s.KeyLen == 4 && ngMod == 0 {
		key.magic = mark
	}
	if s.DataType == rules.TypeInteger && s.DataLen == 4 {
		data.magic = mark
	}

	attrs := []netlink.Attribute{
		{Type: unix.NFTA_SET_TABLE, Data: cstr(table.Name)},
		{Type: unix.NFTA_SET_NAME, Data: cstr(s.Name)},
		{Type: unix.NFTA_SET_FLAGS, Data: binaryutil.BigEndian.PutUint32(flags)},
		{Type: unix.NFTA_SET_KEY_TYPE, Data: binaryutil.BigEndian.PutUint32(key.magic)},
		{Type: unix.NFTA_SET_KEY_LEN, Data: binaryutil.BigEndian.PutUint32(s.KeyLen)},
	}
	dt := data.magic
	if s.DataType == rules.TypeVerdict {
		dt = unix.NFT_DATA_VERDICT
	}
	if s.IsMap() {
		attrs = append(attrs,
			netlink.Attribute{Type: unix.NFTA_SET_DATA_TYPE, Data: binaryutil.BigEndian.PutUint32(dt)},
			netlink.Attribute{Type: unix.NFTA_SET_DATA_LEN, Data: binaryutil.BigEndian.PutUint32(s.DataLen)})
	}
	attrs = append(attrs, netlink.Attribute{Type: unix.NFTA_SET_ID, Data: binaryutil.BigEndian.PutUint32(sp.id)})

	// User data, in nft's order.
	ud := tlvU32(nil, 0, key.order) // NFTNL_UDATA_SET_KEYBYTEORDER
	if s.IsMap() {
		ud = tlvU32(ud, 1, data.order) // NFTNL_UDATA_SET_DATABYTEORDER
	}
	if len(s.Typeof) > 0 {
		if s.KeyType != rules.TypeRaw {
			return nil, none, fmt.Errorf("typeof fields on a %s key", typeName(s.KeyType))
		}
		var bits uint32
		for _, f := range s.Typeof {
			bits += (f.LenBits + 31) / 32 * 32
		}
		if len(s.Typeof) == 1 {
			bits = (s.Typeof[0].LenBits + 7) / 8 * 8
		}
		if bits != s.KeyLen*8 {
			return nil, none, fmt.Errorf("typeof fields make a %d-bit key, key length is %d bytes", bits, s.KeyLen)
		}
	}
	if t, ok, err := keyTypeof(s, ngMod); err != nil {
		return nil, none, err
	} else if ok {
		if ud, err = tlv(ud, 3, t); err != nil { // NFTNL_UDATA_SET_KEY_TYPEOF
			return nil, none, err
		}
		if s.IsMap() {
			if t, ok, err := dataTypeof(s); err != nil {
				return nil, none, err
			} else if ok {
				if ud, err = tlv(ud, 4, t); err != nil { // NFTNL_UDATA_SET_DATA_TYPEOF
					return nil, none, err
				}
			}
		}
	}
	if s.Comment != "" {
		if len(s.Comment) > maxComment {
			return nil, none, fmt.Errorf("comment is %d bytes, nft allows %d", len(s.Comment), maxComment)
		}
		if ud, err = tlv(ud, 7, cstr(s.Comment)); err != nil { // NFTNL_UDATA_SET_COMMENT
			return nil, none, err
		}
	}
	attrs = append(attrs, netlink.Attribute{Type: unix.NFTA_SET_USERDATA, Data: ud})
	shape := setShape{flags: flags, keyType: key.magic, keyLen: s.KeyLen, udata: ud}
	if s.IsMap() {
		shape.dataType, shape.dataLen = dt, s.DataLen
	}
	return attrs, shape, nil
}

// elemSize is the encoded size of one element inside the element list, as
// google/nftables v0.3.0 makeElemList encodes it: the element nest, an
// optional flags attribute, the key nest and the data nest.
func elemSize(e *nftables.SetElement) int {
	n := 4 + 4 + 4 + align4(len(e.Key))
	if e.IntervalEnd {
		n += 8
	}
	switch {
	case e.VerdictData != nil:
		n += 4 + 4 + 8
		if e.VerdictData.Chain != "" {
			n += 4 + align4(len(e.VerdictData.Chain)+1)
		}
	case len(e.Val) > 0:
		n += 4 + 4 + align4(len(e.Val))
	}
	return n
}

func align4(n int) int { return (n + 3) &^ 3 }

// addElements converts elements of sp's set (all of them, or those an
// in-place update adds) and queues them in chunks of less than
// maxElemListBytes, one SetAddElements call (one message) per chunk.
func (b *builder) addElements(table *nftables.Table, sp *setPlan, elements []rules.Element) error {
	s := sp.set
	ns := &nftables.Set{Table: table, Name: s.Name, ID: sp.id, IsMap: s.IsMap(), Interval: s.Interval}
	var (
		cur      []nftables.SetElement
		curBytes int
		firstIdx int
	)
	flush := func(lastIdx int) error {
		if len(cur) == 0 {
			return nil
		}
		elems := cur
		desc := fmt.Sprintf("elements %d-%d of set %q", firstIdx, lastIdx, s.Name)
		if err := b.viaLib(desc, func(c *nftables.Conn) error { return c.SetAddElements(ns, elems) }); err != nil {
			return err
		}
		b.pending[len(b.pending)-1].elems = len(elems)
		sp.chunks = append(sp.chunks, chunk{
			first: kelem{key: elems[0].Key, end: elems[0].IntervalEnd},
			last:  kelem{key: elems[len(elems)-1].Key, end: elems[len(elems)-1].IntervalEnd},
			n:     len(elems),
		})
		sp.kelems += len(elems)
		cur, curBytes = nil, 0
		firstIdx = lastIdx + 1
		return nil
	}
	var verdicts map[rules.Verdict]*expr.Verdict
	for i := range elements {
		e := &elements[i]
		if len(e.Key) != int(s.KeyLen) {
			return fmt.Errorf("element %d: key is %d bytes, the set's keys are %d", i, len(e.Key), s.KeyLen)
		}
		start := nftables.SetElement{Key: e.Key}
		if s.IsMap() {
			if s.DataType == rules.TypeVerdict {
				if e.Verdict == nil {
					return fmt.Errorf("element %d: no verdict", i)
				}
				if verdicts == nil {
					verdicts = map[rules.Verdict]*expr.Verdict{}
				}
				v := verdicts[*e.Verdict]
				if v == nil {
					var err error
					if v, err = convertVerdict(*e.Verdict); err != nil {
						return fmt.Errorf("element %d: %w", i, err)
					}
					verdicts[*e.Verdict] = v
				}
				start.VerdictData = v
			} else {
				if len(e.Data) != int(s.DataLen) {
					return fmt.Errorf("element %d: data is %d bytes, the map's data is %d", i, len(e.Data), s.DataLen)
				}
				start.Val = e.Data
			}
		} else if len(e.Data) > 0 || e.Verdict != nil {
			return fmt.Errorf("element %d: data in a set that is not a map", i)
		}
		group := []nftables.SetElement{start}
		if s.Interval {
			// Half-open [Key, KeyEnd) is how the kernel's rbtree backend
			// stores a range: a start element and an end element holding
			// the first value after it. An empty KeyEnd means the range
			// runs to the end of the key space: no end element (as nft).
			if len(e.KeyEnd) > 0 {
				if len(e.KeyEnd) != int(s.KeyLen) {
					return fmt.Errorf("element %d: key end is %d bytes, the set's keys are %d", i, len(e.KeyEnd), s.KeyLen)
				}
				group = append(group, nftables.SetElement{Key: e.KeyEnd, IntervalEnd: true})
			}
		} else if len(e.KeyEnd) > 0 {
			return fmt.Errorf("element %d: key end in a set without intervals", i)
		}
		size := 0
		for j := range group {
			size += elemSize(&group[j])
		}
		// 4 bytes for the list attribute's own header.
		if len(cur) > 0 && 4+curBytes+size > maxElemListBytes {
			if err := flush(i - 1); err != nil {
				return err
			}
		}
		cur = append(cur, group...)
		curBytes += size
	}
	return flush(len(elements) - 1)
}

// checkEncoding walks a message's top-level attributes and fails if their
// lengths do not add up to the message or, for NEWSETELEM, if the element
// list does not hold every element: the signs of a 16-bit attribute length
// that wrapped (DESIGN §5.1), which the kernel would otherwise take as a
// shorter, truncated list.
func checkEncoding(m batchMsg) error {
	b := m.msg.Data
	if len(b) < 4 {
		return errors.New("message shorter than its netfilter header")
	}
	isElems := m.msg.Header.Type == msgType(unix.NFT_MSG_NEWSETELEM)
	seen := map[uint16]bool{}
	found := -1
	err := walkAttrs(b[4:], func(typ uint16, data []byte) error {
		typ &^= unix.NLA_F_NESTED
		if seen[typ] {
			return fmt.Errorf("attribute %d twice", typ)
		}
		seen[typ] = true
		if isElems && typ == unix.NFTA_SET_ELEM_LIST_ELEMENTS {
			found = 0
			return walkAttrs(data, func(uint16, []byte) error { found++; return nil })
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("bad encoding: %w", err)
	}
	if isElems && found != m.elems {
		return fmt.Errorf("bad encoding: element list holds %d of %d elements", found, m.elems)
	}
	return nil
}

// walkAttrs calls fn for each attribute of b, checking that their lengths
// add up to len(b).
func walkAttrs(b []byte, fn func(typ uint16, data []byte) error) error {
	for len(b) > 0 {
		if len(b) < 4 {
			return fmt.Errorf("%d trailing bytes after the last attribute", len(b))
		}
		l := int(binaryutil.NativeEndian.Uint16(b[:2]))
		if l < 4 || l > len(b) {
			return fmt.Errorf("attribute length %d does not fit the %d bytes left", l, len(b))
		}
		if err := fn(binaryutil.NativeEndian.Uint16(b[2:4]), b[4:l]); err != nil {
			return err
		}
		if align4(l) >= len(b) {
			return nil
		}
		b = b[align4(l):]
	}
	return nil
}
