//go:build linux

package nft

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"nftdns/rules"
)

func mustPlan(t *testing.T, rs *rules.Ruleset) *plan {
	t.Helper()
	p, err := buildPlan(rs)
	if err != nil {
		t.Fatalf("buildPlan: %v", err)
	}
	return p
}

// elemListLen returns the length field of a NEWSETELEM message's element
// list attribute and the number of elements in it.
func elemListLen(t *testing.T, m netlink.Message) (attrLen, n int) {
	t.Helper()
	err := walkAttrs(m.Data[4:], func(typ uint16, data []byte) error {
		if typ&^unix.NLA_F_NESTED == unix.NFTA_SET_ELEM_LIST_ELEMENTS {
			attrLen = 4 + len(data)
			return walkAttrs(data, func(uint16, []byte) error { n++; return nil })
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return attrLen, n
}

func TestPlanChunksStayBelow64KiB(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		n        int
		interval bool
		data     rules.DataType
	}{
		{"hash", 20000, false, rules.TypeNone},
		{"interval", 20000, true, rules.TypeNone},
		{"data map", 20000, false, rules.TypeIPv6AddrPort},
		{"verdict map", 20000, false, rules.TypeVerdict},
		{"interval verdict map", 20000, true, rules.TypeVerdict},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			els := bigKeys(tc.n)
			for i := range els {
				if tc.interval {
					end := bytes.Clone(els[i].Key)
					end[63] = 1
					els[i].KeyEnd = end
				}
				switch tc.data {
				case rules.TypeIPv6AddrPort:
					els[i].Data = addrPort(addr6("2001:db8::1"), 53)
				case rules.TypeVerdict:
					els[i].Verdict = &rules.Verdict{Kind: rules.Goto, Chain: "a-chain-with-a-long-name"}
				}
			}
			s := &rules.Set{
				Name: "big", KeyType: rules.TypeRaw, KeyLen: 64, Interval: tc.interval,
				Typeof:   []rules.Field{{Base: rules.BaseTransport, OffsetBits: 160, LenBits: 512}},
				DataType: tc.data,
				Elements: els,
			}
			if tc.data == rules.TypeIPv6AddrPort {
				s.DataLen = 20
			}
			rs := &rules.Ruleset{Table: "t", Sets: []*rules.Set{s}}
			p := mustPlan(t, rs)
			total, chunks := 0, 0
			for _, m := range p.msgs {
				if m.msg.Header.Type != msgType(unix.NFT_MSG_NEWSETELEM) {
					continue
				}
				l, n := elemListLen(t, m.msg)
				if l >= 1<<16 || l > maxElemListBytes {
					t.Errorf("%s: element list attribute is %d bytes", m.desc, l)
				}
				total += n
				chunks++
			}
			want := tc.n
			if tc.interval {
				want *= 2
			}
			if total != want {
				t.Errorf("element lists hold %d elements, want %d", total, want)
			}
			if sp := p.sets[0]; sp.kelems != want || len(sp.chunks) != chunks {
				t.Errorf("set plan: %d elements in %d chunks, messages: %d in %d", sp.kelems, len(sp.chunks), want, chunks)
			}
			// At least 76 bytes per 64-byte key: 20,000 keys need 25 chunks.
			if chunks < want*76/maxElemListBytes {
				t.Errorf("only %d chunks", chunks)
			}
			t.Logf("%d kernel elements in %d messages, %d bytes", want, chunks, p.bytes)
		})
	}
}

// TestCheckEncodingCatchesWrap feeds checkEncoding an element list whose
// 16-bit length wrapped, as google/nftables v0.3.0 produces for one
// SetAddElements call of more than 64 KiB.
func TestCheckEncodingCatchesWrap(t *testing.T) {
	t.Parallel()
	var elems []netlink.Attribute
	for i := 0; i < 1000; i++ {
		key, _ := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NFTA_DATA_VALUE, Data: make([]byte, 64)}})
		e, _ := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NFTA_SET_ELEM_KEY | unix.NLA_F_NESTED, Data: key}})
		elems = append(elems, netlink.Attribute{Type: uint16(i+1) | unix.NLA_F_NESTED, Data: e})
	}
	list, _ := netlink.MarshalAttributes(elems)
	data, _ := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: unix.NFTA_SET_ELEM_LIST_SET, Data: cstr("s")},
		{Type: unix.NFTA_SET_ELEM_LIST_ELEMENTS | unix.NLA_F_NESTED, Data: list},
	})
	m := batchMsg{
		msg:   netlink.Message{Header: netlink.Header{Type: msgType(unix.NFT_MSG_NEWSETELEM)}, Data: append(nfgenmsg(1, 0), data...)},
		elems: 1000,
	}
	if len(list)+4 < 1<<16 {
		t.Fatalf("list is only %d bytes; the test needs more than 64 KiB", len(list))
	}
	if err := checkEncoding(m); err == nil || !strings.Contains(err.Error(), "bad encoding") {
		t.Errorf("checkEncoding = %v, want a bad encoding error", err)
	}
}

func TestPlanShape(t *testing.T) {
	t.Parallel()
	rs := testRuleset("shape", 10)
	p := mustPlan(t, rs)

	type kind = uint16
	var kinds []kind
	for _, m := range p.msgs {
		kinds = append(kinds, uint16(m.msg.Header.Type)&0xff)
		if m.msg.Header.Flags&unix.NLM_F_ECHO != 0 {
			t.Errorf("%s asks for an echo", m.desc)
		}
		if m.msg.Header.Flags&netlink.Acknowledge == 0 {
			t.Errorf("%s asks for no ack", m.desc)
		}
	}
	// Replace the table: add (no EXCL), delete, create with the comment.
	if kinds[0] != unix.NFT_MSG_NEWTABLE || kinds[1] != unix.NFT_MSG_DELTABLE || kinds[2] != unix.NFT_MSG_NEWTABLE {
		t.Fatalf("first messages are %v, want NEWTABLE DELTABLE NEWTABLE", kinds[:3])
	}
	if p.msgs[0].msg.Header.Flags&netlink.Excl != 0 {
		t.Error("the first NEWTABLE has NLM_F_EXCL: it would fail when the table exists")
	}
	if _, ok := attrsOf(p.msgs[2].msg)[nftaTableUserdata]; !ok {
		t.Error("the new table has no comment")
	}
	// Then counters, chains, sets, rules, and the sets' elements last (a
	// rule binding a filled map walks all of its elements).
	rank := map[kind]int{
		unix.NFT_MSG_NEWOBJ: 1, unix.NFT_MSG_NEWCHAIN: 2,
		unix.NFT_MSG_NEWSET: 3, unix.NFT_MSG_NEWRULE: 4, unix.NFT_MSG_NEWSETELEM: 5,
	}
	last := 0
	for i, k := range kinds[3:] {
		r, ok := rank[k]
		if !ok {
			t.Fatalf("unexpected message type %d: %s", k, p.msgs[i+3].desc)
		}
		if r < last {
			t.Errorf("%s comes after a later kind of message", p.msgs[i+3].desc)
		}
		last = r
	}
	counts := map[kind]int{}
	for _, k := range kinds {
		counts[k]++
	}
	rulesN := 0
	for _, ch := range rs.Chains {
		rulesN += len(ch.Rules)
	}
	if counts[unix.NFT_MSG_NEWOBJ] != 2 || counts[unix.NFT_MSG_NEWCHAIN] != len(rs.Chains) ||
		counts[unix.NFT_MSG_NEWSET] != len(rs.Sets) || counts[unix.NFT_MSG_NEWRULE] != rulesN {
		t.Errorf("message counts %v", counts)
	}
	// The elements come set by set, in the order of the sets.
	var setOrder, elemOrder []string
	for _, m := range p.msgs {
		a := attrsOf(m.msg)
		switch uint16(m.msg.Header.Type) & 0xff {
		case unix.NFT_MSG_NEWSET:
			setOrder = append(setOrder, str(a[unix.NFTA_SET_NAME]))
		case unix.NFT_MSG_NEWSETELEM:
			elemOrder = append(elemOrder, str(a[unix.NFTA_SET_ELEM_LIST_SET]))
		}
	}
	elemOrder = slices.Compact(elemOrder)
	var withElems []string
	for _, s := range rs.Sets {
		if len(s.Elements) > 0 {
			withElems = append(withElems, s.Name)
		}
	}
	if !slices.Equal(elemOrder, withElems) || len(setOrder) != len(rs.Sets) {
		t.Errorf("elements sent for %v, want %v; sets created %v", elemOrder, withElems, setOrder)
	}
}

// nftUdata are set user data bytes nft 1.0.6 sent (nft --debug=mnl).
var nftUdata = []struct {
	name string
	set  *rules.Set
	rs   *rules.Ruleset // for the numgen map, the rule that looks it up
	hex  string
}{
	{
		name: "typeof @th,160,96",
		set: &rules.Set{Name: "s", KeyType: rules.TypeRaw, KeyLen: 12,
			Typeof: []rules.Field{{Base: rules.BaseTransport, OffsetBits: 160, LenBits: 96}}},
		hex: "000402000000" + "0326" + "000407000000" + "011e" +
			"000400000000" + "010400000000" + "020403000000" + "0304a0000000" + "040460000000",
	},
	{
		name: "typeof @ih,112,128; flags interval",
		set: &rules.Set{Name: "i", KeyType: rules.TypeRaw, KeyLen: 16, Interval: true,
			Typeof: []rules.Field{{Base: rules.BaseInner, OffsetBits: 112, LenBits: 128}}},
		hex: "000402000000" + "0326" + "000407000000" + "011e" +
			"000400000000" + "010400000000" + "020404000000" + "030470000000" + "040480000000",
	},
	{
		name: "typeof @th,160,96 . @th,64,16",
		set: &rules.Set{Name: "c", KeyType: rules.TypeRaw, KeyLen: 16,
			Typeof: []rules.Field{
				{Base: rules.BaseTransport, OffsetBits: 160, LenBits: 96},
				{Base: rules.BaseTransport, OffsetBits: 64, LenBits: 16},
			}},
		hex: "000400000000" + "0358" + "00040d000000" + "0150" +
			"0026" + "000407000000" + "011e" + "000400000000" + "010400000000" + "020403000000" + "0304a0000000" + "040460000000" +
			"0126" + "000407000000" + "011e" + "000400000000" + "010400000000" + "020403000000" + "030440000000" + "040410000000",
	},
	{
		name: "typeof @th,160,96 : verdict",
		set: &rules.Set{Name: "v", KeyType: rules.TypeRaw, KeyLen: 12, DataType: rules.TypeVerdict,
			Typeof: []rules.Field{{Base: rules.BaseTransport, OffsetBits: 160, LenBits: 96}}},
		hex: "000402000000" + "010400000000" + "0326" + "000407000000" + "011e" +
			"000400000000" + "010400000000" + "020403000000" + "0304a0000000" + "040460000000" +
			"0408" + "000401000000" + "0100",
	},
	{
		// nft adds NFTNL_UDATA_SET_DATA_INTERVAL (06 04 00000000), which
		// says "not an interval map" and which we leave out.
		name: "typeof numgen inc mod 2 : ip daddr . th dport",
		set: &rules.Set{Name: "m", KeyType: rules.TypeInteger, KeyLen: 4,
			DataType: rules.TypeIPv4AddrPort, DataLen: 8},
		rs: &rules.Ruleset{Chains: []*rules.Chain{{Name: "c", Rules: []rules.Rule{{Exprs: []rules.Expr{
			rules.Numgen{Dst: 0, Modulus: 2},
			rules.Lookup{Set: "m", Src: 0, Dst: 0, IsMap: true},
		}}}}}},
		hex: "000401000000" + "010400000000" +
			"031a" + "000417000000" + "0112" + "000400000000" + "010402000000" + "020400000000" +
			"0434" + "00040d000000" + "012c" +
			"0014" + "000407000000" + "010c" + "00040c000000" + "01040c000000" +
			"0114" + "000407000000" + "010c" + "00040b000000" + "010402000000",
	},
}

func TestSetUserdataMatchesNft(t *testing.T) {
	t.Parallel()
	for _, tc := range nftUdata {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rs := &rules.Ruleset{Table: "t", Sets: []*rules.Set{tc.set}}
			if tc.rs != nil {
				rs.Chains = tc.rs.Chains
			}
			p := mustPlan(t, rs)
			for _, m := range p.msgs {
				if m.msg.Header.Type != msgType(unix.NFT_MSG_NEWSET) {
					continue
				}
				got := hex.EncodeToString(attrsOf(m.msg)[unix.NFTA_SET_USERDATA])
				if got != tc.hex {
					t.Errorf("user data\n got %s\nwant %s", got, tc.hex)
				}
				return
			}
			t.Fatal("no NEWSET message")
		})
	}
}

func TestConvertExpr(t *testing.T) {
	t.Parallel()
	sets := map[string]*setPlan{
		"vm":  {set: &rules.Set{Name: "vm", DataType: rules.TypeVerdict}, id: 7},
		"map": {set: &rules.Set{Name: "map", DataType: rules.TypeIPv4AddrPort}, id: 8},
	}
	for _, tc := range []struct {
		name string
		in   rules.Expr
		want expr.Any
	}{
		{"register numbering", rules.Payload{Base: rules.BaseTransport, Offset: 20, Len: 13, Dst: 2},
			&expr.Payload{DestRegister: unix.NFT_REG32_02, Base: expr.PayloadBaseTransportHeader, Offset: 20, Len: 13}},
		{"inner header", rules.Payload{Base: rules.BaseInner, Offset: 14, Len: 4, Dst: 0},
			&expr.Payload{DestRegister: unix.NFT_REG32_00, Base: 3, Offset: 14, Len: 4}},
		{"verdict map writes the verdict register", rules.Lookup{Set: "vm", Src: 0, Dst: 5, IsMap: true},
			&expr.Lookup{SourceRegister: unix.NFT_REG32_00, DestRegister: unix.NFT_REG_VERDICT, IsDestRegSet: true, SetName: "vm", SetID: 7}},
		{"data map", rules.Lookup{Set: "map", Src: 1, Dst: 0, IsMap: true},
			&expr.Lookup{SourceRegister: unix.NFT_REG32_01, DestRegister: unix.NFT_REG32_00, IsDestRegSet: true, SetName: "map", SetID: 8}},
		{"dnat like nft 1.0.6", rules.NAT{Kind: rules.DNAT, Family: rules.IPv4, Addr: 0, Proto: 1, HasProto: true},
			&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: unix.NFT_REG32_00, RegProtoMin: unix.NFT_REG32_01}},
		{"named counter", rules.Counter{Name: "blocked"}, &expr.Objref{Type: unix.NFT_OBJECT_COUNTER, Name: "blocked"}},
		{"anonymous counter", rules.Counter{}, &expr.Counter{}},
		{"log prefix only", rules.Log{Prefix: "x "}, &expr.Log{Key: 1 << unix.NFTA_LOG_PREFIX, Data: []byte("x ")}},
		{"jhash", rules.Hash{Src: 1, Dst: 0, Len: 4, Modulus: 4, Seed: 1},
			&expr.Hash{SourceRegister: unix.NFT_REG32_01, DestRegister: unix.NFT_REG32_00, Length: 4, Modulus: 4, Seed: 1, Type: expr.HashTypeJenkins}},
		{"goto", rules.Verdict{Kind: rules.Goto, Chain: "x"}, &expr.Verdict{Kind: expr.VerdictGoto, Chain: "x"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := convertExpr(tc.in, sets)
			if err != nil {
				t.Fatal(err)
			}
			gb, err1 := expr.Marshal(unix.NFPROTO_INET, got)
			wb, err2 := expr.Marshal(unix.NFPROTO_INET, tc.want)
			if err1 != nil || err2 != nil {
				t.Fatal(err1, err2)
			}
			if !bytes.Equal(gb, wb) {
				t.Errorf("got %#v, want %#v", got, tc.want)
			}
		})
	}
	if _, err := convertExpr(rules.Verdict{Kind: rules.Jump}, sets); err == nil {
		t.Error("jump without a chain: no error")
	}
}

func TestPlanRejects(t *testing.T) {
	t.Parallel()
	set := func(mod func(s *rules.Set)) *rules.Ruleset {
		s := &rules.Set{Name: "s", KeyType: rules.TypeIPv4Addr, KeyLen: 4,
			Elements: []rules.Element{{Key: addr4("192.0.2.1")}}}
		mod(s)
		return &rules.Ruleset{Table: "t", Sets: []*rules.Set{s}}
	}
	for _, tc := range []struct {
		name, want string
		rs         *rules.Ruleset
	}{
		{"no table", "no table name", &rules.Ruleset{}},
		{"key length", `set "s": element 1: key is 3 bytes`, set(func(s *rules.Set) {
			s.Elements = append(s.Elements, rules.Element{Key: []byte{1, 2, 3}})
		})},
		{"key type length", "ipv4", set(func(s *rules.Set) { s.KeyLen = 16 })},
		{"65-byte key", "key length 65", set(func(s *rules.Set) { s.KeyType, s.KeyLen = rules.TypeRaw, 65 })},
		{"typeof length", "typeof fields make a 32-bit key", set(func(s *rules.Set) {
			s.KeyType, s.KeyLen = rules.TypeRaw, 5
			s.Typeof = []rules.Field{{Base: rules.BaseTransport, OffsetBits: 0, LenBits: 32}}
			s.Elements = nil
		})},
		{"map without data", "data is 0 bytes", set(func(s *rules.Set) {
			s.DataType, s.DataLen = rules.TypeIPv4Addr, 4
		})},
		{"interval concat", "not supported", set(func(s *rules.Set) {
			s.KeyType, s.KeyLen, s.Interval = rules.TypeIPv4AddrPort, 8, true
			s.Elements = nil
		})},
		{"comment", "comment is 129 bytes", set(func(s *rules.Set) { s.Comment = strings.Repeat("x", 129) })},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := buildPlan(tc.rs)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("buildPlan error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestFakeApply(t *testing.T) {
	t.Parallel()
	k := newFakeKernel()
	c := k.conn()
	rs := testRuleset("fake", 6000)
	gen := k.gen
	stats, err := c.Apply(context.Background(), rs)
	if err != nil {
		t.Fatalf("Apply: %v\n%s", err, k)
	}
	batch := k.lastBatch()
	begin := batch[0]
	id, ok := attrsOf(begin)[unix.NFNL_BATCH_GENID]
	if !ok || binaryutil.BigEndian.Uint32(id) != gen {
		t.Errorf("batch begin genid attribute %x, want %d", id, gen)
	}
	if !bytes.Equal(begin.Data[:4], []byte{unix.AF_UNSPEC, 0, 0, unix.NFNL_SUBSYS_NFTABLES}) {
		t.Errorf("batch begin nfgenmsg %x, want res_id NFNL_SUBSYS_NFTABLES", begin.Data[:4])
	}
	if stats.Generation != k.gen || stats.Messages != len(batch) {
		t.Errorf("stats %+v; kernel generation %d, batch of %d", stats, k.gen, len(batch))
	}
	if got := k.setSize("fake", "big"); got != 6000 {
		t.Errorf("big holds %d elements", got)
	}
	ctrs, err := c.Counters(context.Background(), "fake")
	if err != nil || len(ctrs) != 2 {
		t.Errorf("Counters = %v, %v", ctrs, err)
	}
	if existed, err := c.Flush(context.Background(), "fake"); err != nil || !existed {
		t.Errorf("Flush = %v, %v", existed, err)
	}
	if existed, err := c.Flush(context.Background(), "fake"); err != nil || existed {
		t.Errorf("second Flush = %v, %v", existed, err)
	}
	if _, err := c.Counters(context.Background(), "fake"); !errors.Is(err, ErrNoTable) {
		t.Errorf("Counters of a missing table: %v", err)
	}
}

func TestFakeGenerationChanged(t *testing.T) {
	t.Parallel()
	k := newFakeKernel()
	c := k.conn()
	if _, err := c.Apply(context.Background(), testRuleset("t", 10)); err != nil {
		t.Fatal(err)
	}
	before := k.String()
	c.beforeCommit = func() {
		k.mu.Lock()
		k.gen++ // someone else's commit
		k.mu.Unlock()
	}
	_, err := c.Apply(context.Background(), testRuleset("t", 20))
	if !errors.Is(err, ErrGenerationChanged) || !errors.Is(err, unix.ERESTART) {
		t.Fatalf("Apply = %v, want ErrGenerationChanged", err)
	}
	after := k.String()
	if strings.SplitN(before, "\n", 2)[1] != strings.SplitN(after, "\n", 2)[1] {
		t.Errorf("state changed:\n%s\nwas:\n%s", after, before)
	}
}

func TestFakeKernelRefuses(t *testing.T) {
	t.Parallel()
	k := newFakeKernel()
	c := k.conn()
	if _, err := c.Apply(context.Background(), testRuleset("t", 10)); err != nil {
		t.Fatal(err)
	}
	before := k.String()
	k.failMsg = func(m netlink.Message) error {
		if m.Header.Type == msgType(unix.NFT_MSG_NEWRULE) && strings.Contains(string(m.Data), "nat-postrouting") {
			return unix.EOPNOTSUPP
		}
		return nil
	}
	_, err := c.Apply(context.Background(), testRuleset("t", 20))
	if err == nil || !errors.Is(err, unix.EOPNOTSUPP) || !strings.Contains(err.Error(), `rule 0 in chain "nat-postrouting" (udp masquerade)`) {
		t.Fatalf("Apply = %v, want the masquerade rule's error", err)
	}
	if after := k.String(); after != before {
		t.Errorf("state changed:\n%s\nwas:\n%s", after, before)
	}
}

func TestFakeLostAcks(t *testing.T) {
	t.Parallel()
	k := newFakeKernel()
	c := k.conn()
	k.lostAcks = true
	if _, err := c.Apply(context.Background(), testRuleset("t", 6000)); err != nil {
		t.Fatalf("Apply with lost acks of a committed batch: %v", err)
	}
	if got := k.setSize("t", "big"); got != 6000 {
		t.Errorf("big holds %d elements", got)
	}
	// A refused batch whose acks are lost: the generation did not move.
	k.failMsg = func(m netlink.Message) error {
		if m.Header.Type == msgType(unix.NFT_MSG_NEWRULE) {
			return unix.ENOENT
		}
		return nil
	}
	_, err := c.Apply(context.Background(), testRuleset("t", 10))
	if err == nil || !strings.Contains(err.Error(), "not committed") {
		t.Errorf("Apply = %v, want not committed", err)
	}
	if got := k.setSize("t", "big"); got != 6000 {
		t.Errorf("big holds %d elements after the refused batch", got)
	}
}

func TestFakeVerifyFindsMissingElements(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, set, want string
		n               int
	}{
		{"read back", "names13", `set "names13" holds 2 elements, 3 were sent`, 10},
		{"chunk ends", "big", `set "big": chunk 1 of`, 6000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			k := newFakeKernel()
			k.dropLast = map[string]int{tc.set: 1}
			_, err := k.conn().Apply(context.Background(), testRuleset("t", tc.n))
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "verification failed") {
				t.Errorf("Apply = %v, want %q", err, tc.want)
			}
		})
	}
}
