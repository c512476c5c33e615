//go:build linux

package nft

import (
	"bytes"
	"fmt"
	"strings"

	"github.com/google/nftables/binaryutil"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Kernel attributes x/sys/unix does not name.
const (
	nftaSetHandle     = 16 // NFTA_SET_HANDLE, u64
	nftaObjHandle     = 6  // NFTA_OBJ_HANDLE, u64
	nftaChainHandle   = unix.NFTA_CHAIN_HANDLE
	nftObjectUnspec   = 0 // NFT_OBJECT_UNSPEC: every object type, in a GETOBJ dump
	chainPolicyAccept = 1 // NF_ACCEPT
)

// tableState is what an in-place Apply needs to know about the existing
// table: read after the generation id, so that the batch's generation
// guard covers the whole read-diff-write.
type tableState struct {
	table  *tableInfo
	chains []*chainInfo // in the kernel's order
	sets   []*setInfo
	objs   []*objInfo
}

// chainInfo is an existing chain.
type chainInfo struct {
	name    string
	handle  uint64
	base    bool
	hook    uint32 // for base chains
	prio    int32
	typ     string // "filter", "nat", "route"
	policy  uint32 // NF_ACCEPT or NF_DROP, for base chains
	comment string
}

// setInfo is an existing set, its shape as the kernel reports it.
type setInfo struct {
	name     string
	handle   uint64
	flags    uint32
	keyType  uint32
	keyLen   uint32
	dataType uint32
	dataLen  uint32
	udata    []byte

	// For small sets (see diffable): the elements, read with the rest of
	// the state, so that an unchanged set can be left alone and a changed
	// one updated by its difference. elems is nil if they were not read.
	elems map[string]string // elemID -> data (a map's data, else "")
}

// objInfo is an existing stateful object; counters come with their values.
type objInfo struct {
	name   string
	typ    uint32
	handle uint64
	value  CounterValue
}

// readTableState reads the chains, sets and objects of inet <table>, and
// the elements of the sets for which small (if not nil) is true.
func readTableState(nc *netlink.Conn, t *tableInfo, table string, small func(name string) bool) (*tableState, error) {
	st := &tableState{table: t}
	var err error
	if st.chains, err = readChains(nc, table); err != nil {
		return nil, err
	}
	if st.sets, err = readSets(nc, table); err != nil {
		return nil, err
	}
	if st.objs, err = readObjects(nc, table, nftObjectUnspec); err != nil {
		return nil, err
	}
	for _, s := range st.sets {
		if small == nil || !small(s.name) || s.flags&unix.NFT_SET_MAP != 0 && s.dataType == unix.NFT_DATA_VERDICT {
			continue
		}
		if s.elems, err = readElements(nc, table, s.name); err != nil {
			return nil, fmt.Errorf("set %q: %w", s.name, err)
		}
	}
	return st, nil
}

// elemID identifies a kernel element: its key and whether it is an
// interval end element.
func elemID(key []byte, end bool) string {
	b := make([]byte, 0, len(key)+1)
	b = append(b, key...)
	if end {
		return string(append(b, 1))
	}
	return string(append(b, 0))
}

// readElements dumps the elements of a set as elemID -> data. It returns
// nil, and no error, if the set holds more than smallSetLimit elements or
// anything it does not know how to compare (timeouts, expressions, key
// ends, verdicts): such a set is flushed and refilled, as before.
func readElements(nc *netlink.Conn, table, set string) (map[string]string, error) {
	attrs, err := netlink.MarshalAttributes(setElemListAttrs(table, set))
	if err != nil {
		return nil, err
	}
	replies, err := dump(nc, netlink.Message{
		Header: netlink.Header{Type: msgType(unix.NFT_MSG_GETSETELEM)},
		Data:   append(nfgenmsg(unix.NFPROTO_INET, 0), attrs...),
	})
	if err != nil {
		return nil, fmt.Errorf("list elements: %w", err)
	}
	out := map[string]string{}
	unknown := false
	for _, r := range replies {
		if r.Header.Type != msgType(unix.NFT_MSG_NEWSETELEM) || len(r.Data) < 4 {
			continue
		}
		err := walkAttrs(r.Data[4:], func(typ uint16, data []byte) error {
			if typ&^unix.NLA_F_NESTED != unix.NFTA_SET_ELEM_LIST_ELEMENTS {
				return nil
			}
			return walkAttrs(data, func(_ uint16, elem []byte) error {
				var key, val []byte
				var flags uint32
				hasKey := false
				err := walkAttrs(elem, func(typ uint16, data []byte) error {
					switch typ &^ unix.NLA_F_NESTED {
					case unix.NFTA_SET_ELEM_KEY:
						hasKey = true
						return walkAttrs(data, func(t uint16, v []byte) error {
							if t&^unix.NLA_F_NESTED != unix.NFTA_DATA_VALUE {
								unknown = true
							}
							key = v
							return nil
						})
					case unix.NFTA_SET_ELEM_FLAGS:
						flags, _ = be32(data)
					case unix.NFTA_SET_ELEM_DATA:
						return walkAttrs(data, func(t uint16, v []byte) error {
							if t&^unix.NLA_F_NESTED != unix.NFTA_DATA_VALUE {
								unknown = true // a verdict
							}
							val = v
							return nil
						})
					default:
						unknown = true
					}
					return nil
				})
				if err != nil {
					return err
				}
				if !hasKey || flags&^uint32(unix.NFT_SET_ELEM_INTERVAL_END) != 0 {
					unknown = true
				}
				id := elemID(key, flags&unix.NFT_SET_ELEM_INTERVAL_END != 0)
				if _, dup := out[id]; dup {
					unknown = true
				}
				out[id] = string(val)
				return nil
			})
		})
		if err != nil {
			return nil, fmt.Errorf("list elements: %w", err)
		}
	}
	if unknown || len(out) > smallSetLimit {
		return nil, nil
	}
	return out, nil
}

// nftDump sends a dump request for inet objects and returns the replies of
// type reply, without the netfilter header.
func nftDump(nc *netlink.Conn, req, reply uint16, attrs []netlink.Attribute) ([][]byte, error) {
	data, err := netlink.MarshalAttributes(attrs)
	if err != nil {
		return nil, err
	}
	replies, err := dump(nc, netlink.Message{
		Header: netlink.Header{Type: msgType(req)},
		Data:   append(nfgenmsg(unix.NFPROTO_INET, 0), data...),
	})
	if err != nil {
		return nil, err
	}
	var out [][]byte
	for _, r := range replies {
		if r.Header.Type == msgType(reply) && len(r.Data) >= 4 {
			out = append(out, r.Data[4:])
		}
	}
	return out, nil
}

func cstring(b []byte) string { return strings.TrimRight(string(b), "\x00") }

func be32(b []byte) (uint32, bool) {
	if len(b) != 4 {
		return 0, false
	}
	return binaryutil.BigEndian.Uint32(b), true
}

func be64(b []byte) uint64 {
	if len(b) != 8 {
		return 0
	}
	return binaryutil.BigEndian.Uint64(b)
}

// readChains lists the chains of inet <table>. The kernel's chain dump
// has no table filter: it lists every inet chain, and we keep ours.
func readChains(nc *netlink.Conn, table string) ([]*chainInfo, error) {
	msgs, err := nftDump(nc, unix.NFT_MSG_GETCHAIN, unix.NFT_MSG_NEWCHAIN, nil)
	if err != nil {
		return nil, fmt.Errorf("list chains: %w", err)
	}
	var out []*chainInfo
	for _, m := range msgs {
		var tbl string
		c := &chainInfo{}
		err := walkAttrs(m, func(typ uint16, data []byte) error {
			switch typ &^ unix.NLA_F_NESTED {
			case unix.NFTA_CHAIN_TABLE:
				tbl = cstring(data)
			case unix.NFTA_CHAIN_NAME:
				c.name = cstring(data)
			case nftaChainHandle:
				c.handle = be64(data)
			case unix.NFTA_CHAIN_TYPE:
				c.typ = cstring(data)
			case unix.NFTA_CHAIN_POLICY:
				c.policy, _ = be32(data)
			case nftaChainUserdata:
				c.comment = udataString(data, udataChainComment)
			case unix.NFTA_CHAIN_HOOK:
				c.base = true
				return walkAttrs(data, func(typ uint16, data []byte) error {
					switch typ &^ unix.NLA_F_NESTED {
					case unix.NFTA_HOOK_HOOKNUM:
						c.hook, _ = be32(data)
					case unix.NFTA_HOOK_PRIORITY:
						p, _ := be32(data)
						c.prio = int32(p)
					}
					return nil
				})
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("list chains: %w", err)
		}
		if tbl == table {
			out = append(out, c)
		}
	}
	return out, nil
}

// readSets lists the named sets of inet <table> (anonymous sets belong to
// the rules that use them and go with them).
func readSets(nc *netlink.Conn, table string) ([]*setInfo, error) {
	msgs, err := nftDump(nc, unix.NFT_MSG_GETSET, unix.NFT_MSG_NEWSET,
		[]netlink.Attribute{{Type: unix.NFTA_SET_TABLE, Data: cstr(table)}})
	if err != nil {
		return nil, fmt.Errorf("list sets: %w", err)
	}
	var out []*setInfo
	for _, m := range msgs {
		var tbl string
		s := &setInfo{}
		err := walkAttrs(m, func(typ uint16, data []byte) error {
			switch typ &^ unix.NLA_F_NESTED {
			case unix.NFTA_SET_TABLE:
				tbl = cstring(data)
			case unix.NFTA_SET_NAME:
				s.name = cstring(data)
			case nftaSetHandle:
				s.handle = be64(data)
			case unix.NFTA_SET_FLAGS:
				s.flags, _ = be32(data)
			case unix.NFTA_SET_KEY_TYPE:
				s.keyType, _ = be32(data)
			case unix.NFTA_SET_KEY_LEN:
				s.keyLen, _ = be32(data)
			case unix.NFTA_SET_DATA_TYPE:
				s.dataType, _ = be32(data)
			case unix.NFTA_SET_DATA_LEN:
				s.dataLen, _ = be32(data)
			case unix.NFTA_SET_USERDATA:
				s.udata = bytes.Clone(data)
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("list sets: %w", err)
		}
		if tbl == table && s.flags&unix.NFT_SET_ANONYMOUS == 0 {
			out = append(out, s)
		}
	}
	return out, nil
}

// readObjects lists the stateful objects of inet <table> of type typ
// (nftObjectUnspec: all), with counter values.
func readObjects(nc *netlink.Conn, table string, typ uint32) ([]*objInfo, error) {
	msgs, err := nftDump(nc, unix.NFT_MSG_GETOBJ, unix.NFT_MSG_NEWOBJ, []netlink.Attribute{
		{Type: unix.NFTA_OBJ_TABLE, Data: cstr(table)},
		{Type: unix.NFTA_OBJ_TYPE, Data: binaryutil.BigEndian.PutUint32(typ)},
	})
	if err != nil {
		return nil, fmt.Errorf("list objects: %w", err)
	}
	var out []*objInfo
	for _, m := range msgs {
		var tbl string
		o := &objInfo{}
		err := walkAttrs(m, func(at uint16, data []byte) error {
			switch at &^ unix.NLA_F_NESTED {
			case unix.NFTA_OBJ_TABLE:
				tbl = cstring(data)
			case unix.NFTA_OBJ_NAME:
				o.name = cstring(data)
			case unix.NFTA_OBJ_TYPE:
				o.typ, _ = be32(data)
			case nftaObjHandle:
				o.handle = be64(data)
			case unix.NFTA_OBJ_DATA:
				return walkAttrs(data, func(ct uint16, d []byte) error {
					switch ct {
					case unix.NFTA_COUNTER_PACKETS:
						o.value.Packets = be64(d)
					case unix.NFTA_COUNTER_BYTES:
						o.value.Bytes = be64(d)
					}
					return nil
				})
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("list objects: %w", err)
		}
		if tbl == table && (typ == nftObjectUnspec || o.typ == typ) {
			out = append(out, o)
		}
	}
	return out, nil
}

// hasApplyID reports whether a rule of inet <table> <chain> carries the
// apply id in its user data (see udataRuleApplyID).
func hasApplyID(nc *netlink.Conn, table, chain string, id []byte) (bool, error) {
	msgs, err := nftDump(nc, unix.NFT_MSG_GETRULE, unix.NFT_MSG_NEWRULE, []netlink.Attribute{
		{Type: unix.NFTA_RULE_TABLE, Data: cstr(table)},
		{Type: unix.NFTA_RULE_CHAIN, Data: cstr(chain)},
	})
	if err != nil {
		return false, fmt.Errorf("list rules of chain %q: %w", chain, err)
	}
	for _, m := range msgs {
		var tbl, ch string
		var ud []byte
		err := walkAttrs(m, func(typ uint16, data []byte) error {
			switch typ &^ unix.NLA_F_NESTED {
			case unix.NFTA_RULE_TABLE:
				tbl = cstring(data)
			case unix.NFTA_RULE_CHAIN:
				ch = cstring(data)
			case unix.NFTA_RULE_USERDATA:
				ud = data
			}
			return nil
		})
		if err != nil {
			return false, fmt.Errorf("list rules of chain %q: %w", chain, err)
		}
		if tbl != table || ch != chain {
			continue
		}
		if got, ok := udataGet(ud, udataRuleApplyID); ok && bytes.Equal(got, id) {
			return true, nil
		}
	}
	return false, nil
}
