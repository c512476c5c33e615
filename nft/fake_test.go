//go:build linux

package nft

import (
	"encoding/binary"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"

	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"github.com/mdlayher/netlink/nltest"
	"golang.org/x/sys/unix"
)

// fakeKernel answers nf_tables netlink like the kernel does for the
// requests this package sends: transactions are all or nothing, acks come
// one per datagram, the generation id changes on every commit and a batch
// with a stale NFNL_BATCH_GENID is refused with ERESTART.
type fakeKernel struct {
	mu      sync.Mutex
	gen     uint32
	handle  uint64
	tables  map[string]*fakeTable
	queue   []netlink.Message
	batches [][]netlink.Message // every batch received, begin and end included

	// Fault injection.
	failMsg  func(m netlink.Message) error // refuse a batch message
	dropLast map[string]int                // drop n elements from each NEWSETELEM of a set
	lostAcks bool                          // process batches but lose their acks (ENOBUFS)
}

type fakeTable struct {
	handle   uint64
	comment  string
	counters []string
	sets     map[string]map[string]bool // set -> element (key + end flag)
}

func newFakeKernel() *fakeKernel {
	return &fakeKernel{gen: 100, handle: 1, tables: map[string]*fakeTable{}}
}

// conn returns a Conn whose sockets talk to the fake.
func (k *fakeKernel) conn() *Conn {
	return newConn(func() (*netlink.Conn, error) { return nltest.Dial(k.serve), nil })
}

func (t *fakeTable) clone() *fakeTable {
	c := &fakeTable{handle: t.handle, comment: t.comment, counters: append([]string(nil), t.counters...),
		sets: map[string]map[string]bool{}}
	for n, s := range t.sets {
		cs := make(map[string]bool, len(s))
		for e := range s {
			cs[e] = true
		}
		c.sets[n] = cs
	}
	return c
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
	_ = walkAttrs(list, func(_ uint16, elem []byte) error {
		var key []byte
		end := byte(0)
		_ = walkAttrs(elem, func(typ uint16, data []byte) error {
			switch typ &^ unix.NLA_F_NESTED {
			case unix.NFTA_SET_ELEM_KEY:
				_ = walkAttrs(data, func(_ uint16, v []byte) error { key = v; return nil })
			case unix.NFTA_SET_ELEM_FLAGS:
				if binaryutil.BigEndian.Uint32(data)&unix.NFT_SET_ELEM_INTERVAL_END != 0 {
					end = 1
				}
			}
			return nil
		})
		out = append(out, string(append(append([]byte{}, key...), end)))
		return nil
	})
	return out
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
	switch m.Header.Type {
	case msgType(unix.NFT_MSG_NEWTABLE):
		name := str(a[unix.NFTA_TABLE_NAME])
		if tables[name] != nil {
			if m.Header.Flags&netlink.Excl != 0 {
				return unix.EEXIST
			}
			return 0
		}
		*handle++
		c, _ := userdata.GetString(a[nftaTableUserdata], udataTableComment)
		tables[name] = &fakeTable{handle: *handle, comment: c, sets: map[string]map[string]bool{}}
	case msgType(unix.NFT_MSG_DELTABLE):
		name := str(a[unix.NFTA_TABLE_NAME])
		if tables[name] == nil {
			return unix.ENOENT
		}
		delete(tables, name)
	case msgType(unix.NFT_MSG_NEWOBJ):
		t := tables[str(a[unix.NFTA_OBJ_TABLE])]
		if t == nil {
			return unix.ENOENT
		}
		t.counters = append(t.counters, str(a[unix.NFTA_OBJ_NAME]))
	case msgType(unix.NFT_MSG_NEWSET):
		t := tables[str(a[unix.NFTA_SET_TABLE])]
		if t == nil {
			return unix.ENOENT
		}
		t.sets[str(a[unix.NFTA_SET_NAME])] = map[string]bool{}
	case msgType(unix.NFT_MSG_NEWSETELEM):
		t := tables[str(a[unix.NFTA_SET_ELEM_LIST_TABLE])]
		if t == nil {
			return unix.ENOENT
		}
		name := str(a[unix.NFTA_SET_ELEM_LIST_SET])
		s := t.sets[name]
		if s == nil {
			return unix.ENOENT
		}
		keys := elemKeys(a[unix.NFTA_SET_ELEM_LIST_ELEMENTS])
		keys = keys[:len(keys)-min(len(keys), k.dropLast[name])]
		for _, key := range keys {
			if s[key] {
				return unix.EEXIST
			}
			s[key] = true
		}
	case msgType(unix.NFT_MSG_NEWCHAIN), msgType(unix.NFT_MSG_NEWRULE):
		if tables[str(a[unix.NFTA_CHAIN_TABLE])] == nil {
			return unix.ENOENT
		}
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
		t := k.tables[name]
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
		var s map[string]bool
		if t != nil {
			s = t.sets[str(a[unix.NFTA_SET_ELEM_LIST_SET])]
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
			for range s {
				elems = append(elems, netlink.Attribute{Type: 1 | unix.NLA_F_NESTED, Data: []byte{}})
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
			if !s[key] {
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
		t := k.tables[name]
		var msgs []netlink.Message
		if t != nil {
			for _, c := range t.counters {
				data, _ := netlink.MarshalAttributes([]netlink.Attribute{
					{Type: unix.NFTA_COUNTER_BYTES, Data: binaryutil.BigEndian.PutUint64(0)},
					{Type: unix.NFTA_COUNTER_PACKETS, Data: binaryutil.BigEndian.PutUint64(0)},
				})
				msgs = append(msgs, k.reply(m, unix.NFT_MSG_NEWOBJ, []netlink.Attribute{
					{Type: unix.NFTA_OBJ_TABLE, Data: cstr(name)},
					{Type: unix.NFTA_OBJ_NAME, Data: cstr(c)},
					{Type: unix.NFTA_OBJ_TYPE, Data: binaryutil.BigEndian.PutUint32(unix.NFT_OBJECT_COUNTER)},
					{Type: unix.NFTA_OBJ_DATA | unix.NLA_F_NESTED, Data: data},
				}))
			}
		}
		k.multipart(m, msgs)
	default:
		k.queue = append(k.queue, ack(m, unix.EOPNOTSUPP))
	}
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
	if t == nil {
		return -1
	}
	return len(t.sets[set])
}

func (k *fakeKernel) String() string {
	k.mu.Lock()
	defer k.mu.Unlock()
	var b strings.Builder
	fmt.Fprintf(&b, "gen %d\n", k.gen)
	for _, n := range slices.Sorted(maps.Keys(k.tables)) {
		t := k.tables[n]
		fmt.Fprintf(&b, "table %s handle %d comment %q counters %v\n", n, t.handle, t.comment, t.counters)
		for _, sn := range slices.Sorted(maps.Keys(t.sets)) {
			fmt.Fprintf(&b, "  set %s: %d\n", sn, len(t.sets[sn]))
		}
	}
	return b.String()
}
