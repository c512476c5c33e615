//go:build linux

package nft

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"

	"github.com/google/nftables/binaryutil"
	"github.com/mdlayher/netlink"
	"github.com/mdlayher/netlink/nltest"
	"golang.org/x/sys/unix"
)

// fakeKernel answers nf_tables netlink like the kernel does for the
// requests this package sends: transactions are all or nothing, acks come
// one per datagram, the generation id changes on every commit and a batch
// with a stale NFNL_BATCH_GENID is refused with ERESTART. Like the kernel it
// tracks references: a rule's lookups, objrefs and jumps and a verdict
// map element's jump must name something that exists, and what is
// referenced cannot be deleted (EBUSY).
type fakeKernel struct {
	mu      sync.Mutex
	gen     uint32
	handle  uint64 // last handle given out, for tables and everything in them
	tables  map[string]*fakeTable
	queue   []netlink.Message
	batches [][]netlink.Message // every batch received, begin and end included

	// Fault injection.
	failMsg  func(m netlink.Message) error // refuse a batch message
	dropLast map[string]int                // drop n elements from each NEWSETELEM of a set
	lostAcks bool                          // process batches but lose their acks (ENOBUFS)
}

type fakeTable struct {
	handle  uint64
	comment string
	flags   uint32
	objs    map[string]*fakeObj
	sets    map[string]*fakeSet
	chains  map[string]*fakeChain
}

type fakeObj struct {
	handle         uint64
	typ            uint32
	packets, bytes uint64
}

type fakeSet struct {
	handle uint64
	attrs  map[uint16][]byte // NEWSET attributes, echoed in dumps
	elems  map[string]string // key (+ interval end byte) -> verdict chain, or "\x00" + a map's data
}

type fakeChain struct {
	handle  uint64
	base    bool
	hook    uint32
	prio    int32
	typ     string
	policy  uint32
	comment string
	rules   []*fakeRule
}

type fakeRule struct {
	handle            uint64
	udata             []byte
	sets, objs, jumps []string
}

func newFakeKernel() *fakeKernel {
	return &fakeKernel{gen: 100, handle: 1, tables: map[string]*fakeTable{}}
}

// conn returns a Conn whose sockets talk to the fake.
func (k *fakeKernel) conn() *Conn {
	return newConn(func() (*netlink.Conn, error) { return nltest.Dial(k.serve), nil })
}

func (t *fakeTable) clone() *fakeTable {
	c := &fakeTable{handle: t.handle, comment: t.comment, flags: t.flags,
		objs: map[string]*fakeObj{}, sets: map[string]*fakeSet{}, chains: map[string]*fakeChain{}}
	for n, o := range t.objs {
		co := *o
		c.objs[n] = &co
	}
	for n, s := range t.sets {
		c.sets[n] = &fakeSet{handle: s.handle, attrs: maps.Clone(s.attrs), elems: maps.Clone(s.elems)}
	}
	for n, ch := range t.chains {
		cc := *ch
		cc.rules = slices.Clone(ch.rules) // rules are never modified in place
		c.chains[n] = &cc
	}
	return c
}

// chainUse counts the references to a chain: jumps from rules in other
// chains and verdict map elements.
func (t *fakeTable) chainUse(name string) int {
	n := 0
	for cn, ch := range t.chains {
		for _, r := range ch.rules {
			if cn != name {
				n += count(r.jumps, name)
			}
		}
	}
	for _, s := range t.sets {
		for _, target := range s.elems {
			if target == name {
				n++
			}
		}
	}
	return n
}

// ruleUse counts the rules that reference a set or an object.
func (t *fakeTable) ruleUse(set, obj string) int {
	n := 0
	for _, ch := range t.chains {
		for _, r := range ch.rules {
			n += count(r.sets, set) + count(r.objs, obj)
		}
	}
	return n
}

func count(list []string, s string) int {
	n := 0
	for _, x := range list {
		if s != "" && x == s {
			n++
		}
	}
	return n
}

// serve is the nltest.Func: requests are answered into a queue, and every
// receive pops one datagram, as from a real socket.
func (k *fakeKernel) serve(req []netlink.Message) ([]netlink.Message, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if req == nil {
		if len(k.queue) == 0 {
			return nil, &netlink.OpError{Op: "receive", Err: os.ErrDeadlineExceeded}
		}
		m := k.queue[0]
		k.queue = k.queue[1:]
		if m.Header.Type == netlink.Overrun { // our marker for a lost-acks error
			return nil, os.NewSyscallError("recvmsg", unix.ENOBUFS)
		}
		return []netlink.Message{m}, nil
	}
	if req[0].Header.Type == netlink.HeaderType(unix.NFNL_MSG_BATCH_BEGIN) {
		k.batch(req)
		return nil, nil
	}
	for _, m := range req {
		k.request(m)
	}
	return nil, nil
}

func ack(req netlink.Message, errno unix.Errno) netlink.Message {
	data := binary.NativeEndian.AppendUint32(nil, uint32(-int32(errno)))
	h := req.Header
	h.Length = 16
	hb := make([]byte, 16)
	binary.NativeEndian.PutUint32(hb[0:], h.Length)
	binary.NativeEndian.PutUint16(hb[4:], uint16(h.Type))
	binary.NativeEndian.PutUint16(hb[6:], uint16(h.Flags))
	binary.NativeEndian.PutUint32(hb[8:], h.Sequence)
	binary.NativeEndian.PutUint32(hb[12:], h.PID)
	return netlink.Message{
		Header: netlink.Header{Type: netlink.Error, Sequence: req.Header.Sequence, PID: req.Header.PID},
		Data:   append(data, hb...),
	}
}

func attrsOf(m netlink.Message) map[uint16][]byte {
	out := map[uint16][]byte{}
	_ = walkAttrs(m.Data[4:], func(typ uint16, data []byte) error {
		out[typ&^unix.NLA_F_NESTED] = data
		return nil
	})
	return out
}

func str(b []byte) string { return strings.TrimRight(string(b), "\x00") }

// elemKeys lists the elements of an NFTA_SET_ELEM_LIST_ELEMENTS attribute
// as key bytes plus a byte for the interval end flag.
func elemKeys(list []byte) []string {
	var out []string
	for _, e := range elems(list) {
		out = append(out, e.key)
	}
	return out
}

type fakeElem struct{ key, chain, data string }

// value is what fakeSet.elems holds for the element.
func (e fakeElem) value() string {
	if e.chain != "" {
		return e.chain
	}
	if e.data != "" {
		return "\x00" + e.data
	}
	return ""
}

// elems parses an element list: keys as elemKeys, and the chain a
// verdict element jumps to.
func elems(list []byte) []fakeElem {
	var out []fakeElem
	_ = walkAttrs(list, func(_ uint16, elem []byte) error {
		var key []byte
		end := byte(0)
		chain, val := "", ""
		_ = walkAttrs(elem, func(typ uint16, data []byte) error {
			switch typ &^ unix.NLA_F_NESTED {
			case unix.NFTA_SET_ELEM_KEY:
				_ = walkAttrs(data, func(_ uint16, v []byte) error { key = v; return nil })
			case unix.NFTA_SET_ELEM_FLAGS:
				if binaryutil.BigEndian.Uint32(data)&unix.NFT_SET_ELEM_INTERVAL_END != 0 {
					end = 1
				}
			case unix.NFTA_SET_ELEM_DATA:
				chain = verdictChain(data)
				val = string(nested(data)[unix.NFTA_DATA_VALUE])
			}
			return nil
		})
		out = append(out, fakeElem{key: string(append(append([]byte{}, key...), end)), chain: chain, data: val})
		return nil
	})
	return out
}

// verdictChain returns the chain of a jump or goto in an nft_data
// attribute, or "".
func verdictChain(data []byte) string {
	v := nested(data)[unix.NFTA_DATA_VERDICT]
	if v == nil {
		return ""
	}
	return str(nested(v)[unix.NFTA_VERDICT_CHAIN])
}

func nested(b []byte) map[uint16][]byte {
	out := map[uint16][]byte{}
	_ = walkAttrs(b, func(typ uint16, data []byte) error {
		out[typ&^unix.NLA_F_NESTED] = data
		return nil
	})
	return out
}

// parseRule returns what a NEWRULE's expressions reference.
func parseRule(a map[uint16][]byte) *fakeRule {
	r := &fakeRule{udata: bytes.Clone(a[unix.NFTA_RULE_USERDATA])}
	_ = walkAttrs(a[unix.NFTA_RULE_EXPRESSIONS], func(_ uint16, e []byte) error {
		ea := nested(e)
		d := nested(ea[unix.NFTA_EXPR_DATA])
		switch str(ea[unix.NFTA_EXPR_NAME]) {
		case "lookup":
			r.sets = append(r.sets, str(d[unix.NFTA_LOOKUP_SET]))
		case "objref":
			r.objs = append(r.objs, str(d[unix.NFTA_OBJREF_IMM_NAME]))
		case "immediate":
			if c := verdictChain(d[unix.NFTA_IMMEDIATE_DATA]); c != "" {
				r.jumps = append(r.jumps, c)
			}
		}
		return nil
	})
	return r
}

func (k *fakeKernel) batch(req []netlink.Message) {
	k.batches = append(k.batches, req)
	begin := req[0]
	if id, ok := attrsOf(begin)[unix.NFNL_BATCH_GENID]; ok {
		if g := binaryutil.BigEndian.Uint32(id); g != 0 && g != k.gen {
			k.queue = append(k.queue, ack(begin, unix.ERESTART))
			return
		}
	}
	tables := map[string]*fakeTable{}
	for n, t := range k.tables {
		tables[n] = t.clone()
	}
	handle := k.handle
	var acks []netlink.Message
	failed := false
	for _, m := range req[1 : len(req)-1] {
		err := k.apply(tables, &handle, m)
		if err == 0 && k.failMsg != nil {
			if e := k.failMsg(m); e != nil {
				err = e.(unix.Errno)
			}
		}
		if err != 0 {
			failed = true
		}
		acks = append(acks, ack(m, err))
	}
	if !failed {
		k.tables, k.handle = tables, handle
		if k.gen++; k.gen == 0 {
			k.gen = 1
		}
	}
	if k.lostAcks {
		k.queue = append(k.queue, netlink.Message{Header: netlink.Header{Type: netlink.Overrun}})
		return
	}
	k.queue = append(k.queue, acks...)
}

func (k *fakeKernel) apply(tables map[string]*fakeTable, handle *uint64, m netlink.Message) unix.Errno {
	a := attrsOf(m)
	excl := m.Header.Flags&netlink.Excl != 0
	// Every message names its table with attribute 1 (NFTA_*_TABLE), but
	// the table's own messages with NFTA_TABLE_NAME, also 1.
	// Tables of other families than inet (the aux tables) are kept under
	// "FAMILY:NAME", apart from the inet ones.
	key := func(name string) string {
		if len(m.Data) > 0 && m.Data[0] != unix.NFPROTO_INET {
			return fmt.Sprintf("%d:%s", m.Data[0], name)
		}
		return name
	}
	t := tables[key(str(a[1]))]
	if m.Header.Type != msgType(unix.NFT_MSG_NEWTABLE) && t == nil {
		return unix.ENOENT
	}
	next := func() uint64 { *handle++; return *handle }
	switch m.Header.Type {
	case msgType(unix.NFT_MSG_NEWTABLE):
		name := str(a[unix.NFTA_TABLE_NAME])
		flags := binaryutil.BigEndian.Uint32(a[unix.NFTA_TABLE_FLAGS])
		if t != nil {
			if excl {
				return unix.EEXIST
			}
			// nf_tables_updtable: flags only, user data is ignored.
			t.flags = flags
			return 0
		}
		c := udataString(a[nftaTableUserdata], udataTableComment)
		tables[key(name)] = &fakeTable{handle: next(), comment: c, flags: flags,
			objs: map[string]*fakeObj{}, sets: map[string]*fakeSet{}, chains: map[string]*fakeChain{}}
	case msgType(unix.NFT_MSG_DELTABLE):
		delete(tables, key(str(a[unix.NFTA_TABLE_NAME])))

	case msgType(unix.NFT_MSG_NEWOBJ):
		name := str(a[unix.NFTA_OBJ_NAME])
		typ := binaryutil.BigEndian.Uint32(a[unix.NFTA_OBJ_TYPE])
		if o := t.objs[name]; o != nil && o.typ == typ {
			if excl {
				return unix.EEXIST
			}
			return 0
		}
		t.objs[name] = &fakeObj{handle: next(), typ: typ}
	case msgType(unix.NFT_MSG_DELOBJ):
		name := str(a[unix.NFTA_OBJ_NAME])
		o := t.objs[name]
		if o == nil || o.typ != binaryutil.BigEndian.Uint32(a[unix.NFTA_OBJ_TYPE]) {
			return unix.ENOENT
		}
		if t.ruleUse("", name) > 0 {
			return unix.EBUSY
		}
		delete(t.objs, name)

	case msgType(unix.NFT_MSG_NEWSET):
		name := str(a[unix.NFTA_SET_NAME])
		attrs := map[uint16][]byte{}
		for _, at := range []uint16{unix.NFTA_SET_FLAGS, unix.NFTA_SET_KEY_TYPE, unix.NFTA_SET_KEY_LEN, unix.NFTA_SET_DATA_TYPE, unix.NFTA_SET_DATA_LEN, unix.NFTA_SET_USERDATA} {
			if v, ok := a[at]; ok {
				attrs[at] = bytes.Clone(v)
			}
		}
		if bytes.Equal(attrs[unix.NFTA_SET_DATA_TYPE], binaryutil.BigEndian.PutUint32(unix.NFT_DATA_VERDICT)) {
			attrs[unix.NFTA_SET_DATA_LEN] = binaryutil.BigEndian.PutUint32(16) // sizeof(struct nft_verdict)
		}
		if s := t.sets[name]; s != nil {
			if excl {
				return unix.EEXIST
			}
			// nft_set_is_same: the same key, data and flags is a no-op
			// (other user data is ignored), anything else EEXIST.
			for _, at := range []uint16{unix.NFTA_SET_FLAGS, unix.NFTA_SET_KEY_TYPE, unix.NFTA_SET_KEY_LEN, unix.NFTA_SET_DATA_TYPE, unix.NFTA_SET_DATA_LEN} {
				if !bytes.Equal(s.attrs[at], attrs[at]) {
					return unix.EEXIST
				}
			}
			return 0
		}
		t.sets[name] = &fakeSet{handle: next(), attrs: attrs, elems: map[string]string{}}
	case msgType(unix.NFT_MSG_DELSET):
		name := str(a[unix.NFTA_SET_NAME])
		if t.sets[name] == nil {
			return unix.ENOENT
		}
		if t.ruleUse(name, "") > 0 {
			return unix.EBUSY
		}
		delete(t.sets, name)
	case msgType(unix.NFT_MSG_NEWSETELEM):
		name := str(a[unix.NFTA_SET_ELEM_LIST_SET])
		s := t.sets[name]
		if s == nil {
			return unix.ENOENT
		}
		es := elems(a[unix.NFTA_SET_ELEM_LIST_ELEMENTS])
		es = es[:len(es)-min(len(es), k.dropLast[name])]
		for _, e := range es {
			if _, dup := s.elems[e.key]; dup && excl {
				return unix.EEXIST
			}
			if e.chain != "" && t.chains[e.chain] == nil {
				return unix.ENOENT
			}
			s.elems[e.key] = e.value()
		}
	case msgType(unix.NFT_MSG_DELSETELEM):
		s := t.sets[str(a[unix.NFTA_SET_ELEM_LIST_SET])]
		if s == nil {
			return unix.ENOENT
		}
		list, ok := a[unix.NFTA_SET_ELEM_LIST_ELEMENTS]
		if !ok {
			clear(s.elems) // nft_set_flush
			return 0
		}
		for _, key := range elemKeys(list) {
			if _, ok := s.elems[key]; !ok {
				return unix.ENOENT
			}
			delete(s.elems, key)
		}

	case msgType(unix.NFT_MSG_NEWCHAIN):
		name := str(a[unix.NFTA_CHAIN_NAME])
		var hook map[uint16][]byte
		if h, ok := a[unix.NFTA_CHAIN_HOOK]; ok {
			hook = nested(h)
		}
		if c := t.chains[name]; c != nil {
			if excl {
				return unix.EEXIST
			}
			// nf_tables_updchain: the hook must be the same; the policy
			// may change; user data is ignored.
			if hook != nil {
				if !c.base || c.hook != binaryutil.BigEndian.Uint32(hook[unix.NFTA_HOOK_HOOKNUM]) ||
					c.prio != int32(binaryutil.BigEndian.Uint32(hook[unix.NFTA_HOOK_PRIORITY])) || c.typ != str(a[unix.NFTA_CHAIN_TYPE]) {
					return unix.EEXIST
				}
			}
			if p, ok := a[unix.NFTA_CHAIN_POLICY]; ok {
				c.policy = binaryutil.BigEndian.Uint32(p)
			}
			return 0
		}
		c := &fakeChain{handle: next(), comment: udataString(a[nftaChainUserdata], udataChainComment)}
		if hook != nil {
			c.base = true
			c.hook = binaryutil.BigEndian.Uint32(hook[unix.NFTA_HOOK_HOOKNUM])
			c.prio = int32(binaryutil.BigEndian.Uint32(hook[unix.NFTA_HOOK_PRIORITY]))
			c.typ = str(a[unix.NFTA_CHAIN_TYPE])
			c.policy = chainPolicyAccept
			if p, ok := a[unix.NFTA_CHAIN_POLICY]; ok {
				c.policy = binaryutil.BigEndian.Uint32(p)
			}
		}
		t.chains[name] = c
	case msgType(unix.NFT_MSG_DELCHAIN):
		name := str(a[unix.NFTA_CHAIN_NAME])
		c := t.chains[name]
		if c == nil {
			return unix.ENOENT
		}
		if t.chainUse(name) > 0 {
			return unix.EBUSY
		}
		delete(t.chains, name)

	case msgType(unix.NFT_MSG_NEWRULE):
		c := t.chains[str(a[unix.NFTA_RULE_CHAIN])]
		if c == nil {
			return unix.ENOENT
		}
		r := parseRule(a)
		for _, s := range r.sets {
			if t.sets[s] == nil {
				return unix.ENOENT
			}
		}
		for _, o := range r.objs {
			if t.objs[o] == nil {
				return unix.ENOENT
			}
		}
		for _, j := range r.jumps {
			if t.chains[j] == nil {
				return unix.ENOENT
			}
		}
		r.handle = next()
		c.rules = append(c.rules, r)
	case msgType(unix.NFT_MSG_DELRULE):
		if _, ok := a[unix.NFTA_RULE_HANDLE]; ok {
			return unix.EOPNOTSUPP // not used by this package
		}
		name, ok := a[unix.NFTA_RULE_CHAIN]
		if !ok {
			for _, c := range t.chains {
				c.rules = nil
			}
			return 0
		}
		c := t.chains[str(name)]
		if c == nil {
			return unix.ENOENT
		}
		c.rules = nil
	default:
		return unix.EOPNOTSUPP
	}
	return 0
}

func (k *fakeKernel) reply(req netlink.Message, typ uint16, attrs []netlink.Attribute) netlink.Message {
	data, err := netlink.MarshalAttributes(attrs)
	if err != nil {
		panic(err)
	}
	return netlink.Message{
		Header: netlink.Header{Type: msgType(typ), Sequence: req.Header.Sequence, PID: req.Header.PID},
		Data:   append(nfgenmsg(unix.NFPROTO_INET, 0), data...),
	}
}

// multipart queues a dump's answer: the messages, then NLMSG_DONE.
func (k *fakeKernel) multipart(req netlink.Message, msgs []netlink.Message) {
	for _, m := range msgs {
		m.Header.Flags |= netlink.Multi
		k.queue = append(k.queue, m)
	}
	k.queue = append(k.queue, netlink.Message{
		Header: netlink.Header{Type: netlink.Done, Flags: netlink.Multi, Sequence: req.Header.Sequence, PID: req.Header.PID},
		Data:   make([]byte, 4),
	})
}

func (k *fakeKernel) request(m netlink.Message) {
	a := attrsOf(m)
	switch m.Header.Type {
	case msgType(unix.NFT_MSG_GETGEN):
		k.queue = append(k.queue,
			k.reply(m, unix.NFT_MSG_NEWGEN, []netlink.Attribute{{Type: unix.NFTA_GEN_ID, Data: binaryutil.BigEndian.PutUint32(k.gen)}}),
			ack(m, 0))
	case msgType(unix.NFT_MSG_GETTABLE):
		name := str(a[unix.NFTA_TABLE_NAME])
		key := name
		if m.Data[0] != unix.NFPROTO_INET {
			key = fmt.Sprintf("%d:%s", m.Data[0], name)
		}
		t := k.tables[key]
		if t == nil {
			k.queue = append(k.queue, ack(m, unix.ENOENT))
			return
		}
		ud, _ := commentUdata(udataTableComment, t.comment)
		k.queue = append(k.queue, k.reply(m, unix.NFT_MSG_NEWTABLE, []netlink.Attribute{
			{Type: unix.NFTA_TABLE_NAME, Data: cstr(name)},
			{Type: nftaTableHandle, Data: binaryutil.BigEndian.PutUint64(t.handle)},
			{Type: nftaTableUserdata, Data: ud},
		}), ack(m, 0))
	case msgType(unix.NFT_MSG_GETSETELEM):
		t := k.tables[str(a[unix.NFTA_SET_ELEM_LIST_TABLE])]
		var s map[string]string
		if t != nil && t.sets[str(a[unix.NFTA_SET_ELEM_LIST_SET])] != nil {
			s = t.sets[str(a[unix.NFTA_SET_ELEM_LIST_SET])].elems
		}
		if s == nil {
			k.queue = append(k.queue, ack(m, unix.ENOENT))
			return
		}
		if m.Header.Flags&netlink.Dump != 0 {
			// Answer in messages of up to 100 elements.
			var msgs []netlink.Message
			var elems []netlink.Attribute
			flush := func() {
				list, _ := netlink.MarshalAttributes(elems)
				msgs = append(msgs, k.reply(m, unix.NFT_MSG_NEWSETELEM, []netlink.Attribute{
					{Type: unix.NFTA_SET_ELEM_LIST_ELEMENTS | unix.NLA_F_NESTED, Data: list},
				}))
				elems = nil
			}
			for _, key := range slices.Sorted(maps.Keys(s)) {
				elems = append(elems, netlink.Attribute{Type: 1 | unix.NLA_F_NESTED, Data: fakeElemAttrs(key, s[key])})
				if len(elems) == 100 {
					flush()
				}
			}
			if len(elems) > 0 {
				flush()
			}
			k.multipart(m, msgs)
			return
		}
		var replies []netlink.Message
		for _, key := range elemKeys(a[unix.NFTA_SET_ELEM_LIST_ELEMENTS]) {
			if _, ok := s[key]; !ok {
				k.queue = append(k.queue, replies...)
				k.queue = append(k.queue, ack(m, unix.ENOENT))
				return
			}
			replies = append(replies, k.reply(m, unix.NFT_MSG_NEWSETELEM, nil))
		}
		k.queue = append(k.queue, replies...)
		k.queue = append(k.queue, ack(m, 0))
	case msgType(unix.NFT_MSG_GETOBJ):
		name := str(a[unix.NFTA_OBJ_TABLE])
		typ := uint32(0)
		if v, ok := a[unix.NFTA_OBJ_TYPE]; ok {
			typ = binaryutil.BigEndian.Uint32(v)
		}
		var msgs []netlink.Message
		for _, tn := range k.tableNames(name) {
			t := k.tables[tn]
			for _, on := range sortedByHandle(t.objs, func(o *fakeObj) uint64 { return o.handle }) {
				o := t.objs[on]
				if typ != 0 && o.typ != typ {
					continue
				}
				data, _ := netlink.MarshalAttributes([]netlink.Attribute{
					{Type: unix.NFTA_COUNTER_BYTES, Data: binaryutil.BigEndian.PutUint64(o.bytes)},
					{Type: unix.NFTA_COUNTER_PACKETS, Data: binaryutil.BigEndian.PutUint64(o.packets)},
				})
				msgs = append(msgs, k.reply(m, unix.NFT_MSG_NEWOBJ, []netlink.Attribute{
					{Type: unix.NFTA_OBJ_TABLE, Data: cstr(tn)},
					{Type: unix.NFTA_OBJ_NAME, Data: cstr(on)},
					{Type: unix.NFTA_OBJ_TYPE, Data: binaryutil.BigEndian.PutUint32(o.typ)},
					{Type: unix.NFTA_OBJ_DATA | unix.NLA_F_NESTED, Data: data},
					{Type: nftaObjHandle, Data: binaryutil.BigEndian.PutUint64(o.handle)},
				}))
			}
		}
		k.multipart(m, msgs)
	case msgType(unix.NFT_MSG_GETCHAIN):
		// Like the kernel: no table filter in chain dumps.
		var msgs []netlink.Message
		for _, tn := range k.tableNames("") {
			t := k.tables[tn]
			for _, cn := range sortedByHandle(t.chains, func(c *fakeChain) uint64 { return c.handle }) {
				c := t.chains[cn]
				attrs := []netlink.Attribute{
					{Type: unix.NFTA_CHAIN_TABLE, Data: cstr(tn)},
					{Type: unix.NFTA_CHAIN_NAME, Data: cstr(cn)},
					{Type: nftaChainHandle, Data: binaryutil.BigEndian.PutUint64(c.handle)},
				}
				if c.base {
					hook, _ := netlink.MarshalAttributes([]netlink.Attribute{
						{Type: unix.NFTA_HOOK_HOOKNUM, Data: binaryutil.BigEndian.PutUint32(c.hook)},
						{Type: unix.NFTA_HOOK_PRIORITY, Data: binaryutil.BigEndian.PutUint32(uint32(c.prio))},
					})
					attrs = append(attrs,
						netlink.Attribute{Type: unix.NFTA_CHAIN_HOOK | unix.NLA_F_NESTED, Data: hook},
						netlink.Attribute{Type: unix.NFTA_CHAIN_POLICY, Data: binaryutil.BigEndian.PutUint32(c.policy)},
						netlink.Attribute{Type: unix.NFTA_CHAIN_TYPE, Data: cstr(c.typ)})
				}
				if c.comment != "" {
					ud, _ := commentUdata(udataChainComment, c.comment)
					attrs = append(attrs, netlink.Attribute{Type: nftaChainUserdata, Data: ud})
				}
				msgs = append(msgs, k.reply(m, unix.NFT_MSG_NEWCHAIN, attrs))
			}
		}
		k.multipart(m, msgs)
	case msgType(unix.NFT_MSG_GETSET):
		var msgs []netlink.Message
		for _, tn := range k.tableNames(str(a[unix.NFTA_SET_TABLE])) {
			t := k.tables[tn]
			for _, sn := range sortedByHandle(t.sets, func(s *fakeSet) uint64 { return s.handle }) {
				s := t.sets[sn]
				attrs := []netlink.Attribute{
					{Type: unix.NFTA_SET_TABLE, Data: cstr(tn)},
					{Type: unix.NFTA_SET_NAME, Data: cstr(sn)},
					{Type: nftaSetHandle, Data: binaryutil.BigEndian.PutUint64(s.handle)},
				}
				for _, at := range slices.Sorted(maps.Keys(s.attrs)) {
					attrs = append(attrs, netlink.Attribute{Type: at, Data: s.attrs[at]})
				}
				msgs = append(msgs, k.reply(m, unix.NFT_MSG_NEWSET, attrs))
			}
		}
		k.multipart(m, msgs)
	case msgType(unix.NFT_MSG_GETRULE):
		var msgs []netlink.Message
		chain := str(a[unix.NFTA_RULE_CHAIN])
		for _, tn := range k.tableNames(str(a[unix.NFTA_RULE_TABLE])) {
			t := k.tables[tn]
			for _, cn := range sortedByHandle(t.chains, func(c *fakeChain) uint64 { return c.handle }) {
				if chain != "" && cn != chain {
					continue
				}
				for _, r := range t.chains[cn].rules {
					attrs := []netlink.Attribute{
						{Type: unix.NFTA_RULE_TABLE, Data: cstr(tn)},
						{Type: unix.NFTA_RULE_CHAIN, Data: cstr(cn)},
						{Type: unix.NFTA_RULE_HANDLE, Data: binaryutil.BigEndian.PutUint64(r.handle)},
					}
					if r.udata != nil {
						attrs = append(attrs, netlink.Attribute{Type: unix.NFTA_RULE_USERDATA, Data: r.udata})
					}
					msgs = append(msgs, k.reply(m, unix.NFT_MSG_NEWRULE, attrs))
				}
			}
		}
		k.multipart(m, msgs)
	default:
		k.queue = append(k.queue, ack(m, unix.EOPNOTSUPP))
	}
}

// tableNames is the table name, or every table for "".
func (k *fakeKernel) tableNames(name string) []string {
	if name == "" {
		return slices.Sorted(maps.Keys(k.tables))
	}
	if k.tables[name] == nil {
		return nil
	}
	return []string{name}
}

// sortedByHandle lists the keys of m in creation order, as the kernel
// lists objects.
func sortedByHandle[V any](m map[string]V, handle func(V) uint64) []string {
	keys := slices.Collect(maps.Keys(m))
	slices.SortFunc(keys, func(a, b string) int { return cmp.Compare(handle(m[a]), handle(m[b])) })
	return keys
}

// lastBatch returns the last batch received.
func (k *fakeKernel) lastBatch() []netlink.Message {
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(k.batches) == 0 {
		return nil
	}
	return k.batches[len(k.batches)-1]
}

func (k *fakeKernel) setSize(table, set string) int {
	k.mu.Lock()
	defer k.mu.Unlock()
	t := k.tables[table]
	if t == nil || t.sets[set] == nil {
		return -1
	}
	return len(t.sets[set].elems)
}

// count adds traffic to a named counter, as packets through a rule would.
func (k *fakeKernel) count(table, counter string, packets, bytes uint64) {
	k.mu.Lock()
	defer k.mu.Unlock()
	o := k.tables[table].objs[counter]
	o.packets += packets
	o.bytes += bytes
}

// handles returns the handles of a table's chains and sets by name, and
// the table's own as "table".
func (k *fakeKernel) handles(table string) map[string]uint64 {
	k.mu.Lock()
	defer k.mu.Unlock()
	t := k.tables[table]
	out := map[string]uint64{"table": t.handle}
	for n, c := range t.chains {
		out["chain "+n] = c.handle
	}
	for n, s := range t.sets {
		out["set "+n] = s.handle
	}
	return out
}

func (k *fakeKernel) String() string {
	k.mu.Lock()
	defer k.mu.Unlock()
	var b strings.Builder
	fmt.Fprintf(&b, "gen %d\n", k.gen)
	for _, n := range slices.Sorted(maps.Keys(k.tables)) {
		t := k.tables[n]
		fmt.Fprintf(&b, "table %s handle %d comment %q\n", n, t.handle, t.comment)
		for _, on := range slices.Sorted(maps.Keys(t.objs)) {
			o := t.objs[on]
			fmt.Fprintf(&b, "  object %s handle %d type %d: %d packets %d bytes\n", on, o.handle, o.typ, o.packets, o.bytes)
		}
		for _, sn := range slices.Sorted(maps.Keys(t.sets)) {
			s := t.sets[sn]
			fmt.Fprintf(&b, "  set %s handle %d: %d elements\n", sn, s.handle, len(s.elems))
		}
		for _, cn := range slices.Sorted(maps.Keys(t.chains)) {
			c := t.chains[cn]
			fmt.Fprintf(&b, "  chain %s handle %d base %v hook %d prio %d policy %d: %d rules\n", cn, c.handle, c.base, c.hook, c.prio, c.policy, len(c.rules))
		}
	}
	return b.String()
}

// batchOps summarises a batch: one "TYPE name" per message, the name being
// the object's (the chain for rules, the set for elements).
func batchOps(batch []netlink.Message) []string {
	names := map[uint16]string{
		unix.NFT_MSG_NEWTABLE: "NEWTABLE", unix.NFT_MSG_DELTABLE: "DELTABLE",
		unix.NFT_MSG_NEWCHAIN: "NEWCHAIN", unix.NFT_MSG_DELCHAIN: "DELCHAIN",
		unix.NFT_MSG_NEWRULE: "NEWRULE", unix.NFT_MSG_DELRULE: "DELRULE",
		unix.NFT_MSG_NEWSET: "NEWSET", unix.NFT_MSG_DELSET: "DELSET",
		unix.NFT_MSG_NEWSETELEM: "NEWSETELEM", unix.NFT_MSG_DELSETELEM: "DELSETELEM",
		unix.NFT_MSG_NEWOBJ: "NEWOBJ", unix.NFT_MSG_DELOBJ: "DELOBJ",
	}
	var out []string
	for _, m := range batch {
		typ := uint16(m.Header.Type) & 0xff
		if uint16(m.Header.Type)>>8 != unix.NFNL_SUBSYS_NFTABLES {
			continue // batch begin and end
		}
		a := attrsOf(m)
		var name string
		switch typ {
		case unix.NFT_MSG_NEWTABLE, unix.NFT_MSG_DELTABLE:
			name = str(a[unix.NFTA_TABLE_NAME])
		case unix.NFT_MSG_NEWCHAIN, unix.NFT_MSG_DELCHAIN:
			name = str(a[unix.NFTA_CHAIN_NAME])
		case unix.NFT_MSG_NEWRULE, unix.NFT_MSG_DELRULE:
			name = str(a[unix.NFTA_RULE_CHAIN])
		case unix.NFT_MSG_NEWSET, unix.NFT_MSG_DELSET:
			name = str(a[unix.NFTA_SET_NAME])
		case unix.NFT_MSG_NEWSETELEM, unix.NFT_MSG_DELSETELEM:
			name = str(a[unix.NFTA_SET_ELEM_LIST_SET])
		case unix.NFT_MSG_NEWOBJ, unix.NFT_MSG_DELOBJ:
			name = str(a[unix.NFTA_OBJ_NAME])
		}
		out = append(out, names[typ]+" "+name)
	}
	return out
}

// fakeElemAttrs encodes an element as the kernel dumps it: key, interval
// end flag, data or verdict.
func fakeElemAttrs(id, val string) []byte {
	must := func(b []byte, err error) []byte {
		if err != nil {
			panic(err)
		}
		return b
	}
	key := must(netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NFTA_DATA_VALUE, Data: []byte(id[:len(id)-1])}}))
	attrs := []netlink.Attribute{{Type: unix.NFTA_SET_ELEM_KEY | unix.NLA_F_NESTED, Data: key}}
	if id[len(id)-1] == 1 {
		attrs = append(attrs, netlink.Attribute{Type: unix.NFTA_SET_ELEM_FLAGS, Data: binaryutil.BigEndian.PutUint32(unix.NFT_SET_ELEM_INTERVAL_END)})
	}
	switch {
	case strings.HasPrefix(val, "\x00"):
		d := must(netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NFTA_DATA_VALUE, Data: []byte(val[1:])}}))
		attrs = append(attrs, netlink.Attribute{Type: unix.NFTA_SET_ELEM_DATA | unix.NLA_F_NESTED, Data: d})
	case val != "":
		v := must(netlink.MarshalAttributes([]netlink.Attribute{
			{Type: unix.NFTA_VERDICT_CODE, Data: binaryutil.BigEndian.PutUint32(0xfffffffd)}, // NFT_JUMP (-3),
			{Type: unix.NFTA_VERDICT_CHAIN, Data: cstr(val)},
		}))
		d := must(netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NFTA_DATA_VERDICT | unix.NLA_F_NESTED, Data: v}}))
		attrs = append(attrs, netlink.Attribute{Type: unix.NFTA_SET_ELEM_DATA | unix.NLA_F_NESTED, Data: d})
	}
	return must(netlink.MarshalAttributes(attrs))
}

// elemsOf returns the elements of a set in the fake: id -> value as
// fakeSet.elems holds them.
func (k *fakeKernel) elemsOf(table, set string) map[string]string {
	k.mu.Lock()
	defer k.mu.Unlock()
	t := k.tables[table]
	if t == nil || t.sets[set] == nil {
		return nil
	}
	return maps.Clone(t.sets[set].elems)
}
