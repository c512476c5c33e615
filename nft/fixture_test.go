//go:build linux

package nft

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"nftdns/rules"
)

// wireName is a DNS name in wire format ("example.com" -> 07 example 03
// com 00), zero-padded to n bytes when n > 0.
func wireName(name string, n int) []byte {
	var b []byte
	start := 0
	for i := 0; i <= len(name); i++ {
		if i == len(name) || name[i] == '.' {
			b = append(b, byte(i-start))
			b = append(b, name[start:i]...)
			start = i + 1
		}
	}
	b = append(b, 0)
	if n > 0 {
		if len(b) > n {
			panic(fmt.Sprintf("%q is %d bytes, more than %d", name, len(b), n))
		}
		b = append(b, make([]byte, n-len(b))...)
	}
	return b
}

func addr4(s string) []byte {
	a := netip.MustParseAddr(s).As4()
	return a[:]
}

func addr6(s string) []byte {
	a := netip.MustParseAddr(s).As16()
	return a[:]
}

// hostU32 is a 4-byte integer in host byte order, as numgen and jhash write
// it.
func hostU32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }

// addrPort is an address followed by a port in a 4-byte slot, as a
// concatenated map value.
func addrPort(addr []byte, port uint16) []byte {
	return append(append([]byte{}, addr...), byte(port>>8), byte(port), 0, 0)
}

// bigKeys returns n distinct 64-byte keys.
func bigKeys(n int) []rules.Element {
	els := make([]rules.Element, n)
	for i := range els {
		els[i].Key = wireName(fmt.Sprintf("host%07d.blocked.example.com", i), 64)
	}
	return els
}

// testRuleset is a small but complete ruleset exercising every expression
// and set kind the compiler uses. bigN is the size of the 64-byte-key set.
func testRuleset(table string, bigN int) *rules.Ruleset {
	name13 := []rules.Element{
		{Key: wireName("example.com", 0)}, // 13 bytes
		{Key: wireName("example.net", 0)},
		{Key: wireName("example.org", 0)},
	}
	dataMap := []rules.Element{
		{Key: wireName("a.example.com", 64), Data: hostU32(1)},
		{Key: wireName("b.example.com", 64), Data: hostU32(2)},
	}
	vmap := []rules.Element{
		{Key: wireName("example.com", 0), Verdict: &rules.Verdict{Kind: rules.Drop}},
		{Key: wireName("example.net", 0), Verdict: &rules.Verdict{Kind: rules.Accept}},
		{Key: wireName("example.org", 0), Verdict: &rules.Verdict{Kind: rules.Jump, Chain: "deeper"}},
	}
	udp := func() []rules.Expr {
		return []rules.Expr{
			rules.Meta{Key: rules.MetaL4Proto, Dst: 0},
			rules.Cmp{Op: rules.CmpEq, Src: 0, Data: []byte{17}},
		}
	}
	ipv4 := []rules.Expr{
		rules.Meta{Key: rules.MetaNFProto, Dst: 0},
		rules.Cmp{Op: rules.CmpEq, Src: 0, Data: []byte{2}},
	}
	ipv6 := []rules.Expr{
		rules.Meta{Key: rules.MetaNFProto, Dst: 0},
		rules.Cmp{Op: rules.CmpEq, Src: 0, Data: []byte{10}},
	}
	cat := func(parts ...[]rules.Expr) []rules.Expr {
		var out []rules.Expr
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	return &rules.Ruleset{
		Table:    table,
		Comment:  "managed by nftdns tests",
		Counters: []string{"blocked", "passed"},
		Sets: []*rules.Set{
			{
				Name: "clients4", Comment: "client networks", KeyType: rules.TypeIPv4Addr, KeyLen: 4, Interval: true,
				Elements: []rules.Element{
					{Key: addr4("192.0.2.0"), KeyEnd: addr4("192.0.2.128")},
					{Key: addr4("192.0.2.128"), KeyEnd: addr4("192.0.3.0")}, // adjacent
					{Key: addr4("198.18.0.0"), KeyEnd: addr4("198.20.0.0")},
					{Key: addr4("203.0.113.0"), KeyEnd: addr4("203.0.113.128")},
				},
			},
			{
				Name: "names13", KeyType: rules.TypeRaw, KeyLen: 13,
				Typeof:   []rules.Field{{Base: rules.BaseTransport, OffsetBits: 160, LenBits: 104}},
				Elements: name13,
			},
			{
				Name: "big", KeyType: rules.TypeRaw, KeyLen: 64,
				Typeof:   []rules.Field{{Base: rules.BaseTransport, OffsetBits: 160, LenBits: 512}},
				Elements: bigKeys(bigN),
			},
			{
				Name: "actions", KeyType: rules.TypeRaw, KeyLen: 64,
				Typeof:   []rules.Field{{Base: rules.BaseTransport, OffsetBits: 160, LenBits: 512}},
				DataType: rules.TypeInteger, DataLen: 4,
				Elements: dataMap,
			},
			{
				Name: "verdicts", KeyType: rules.TypeRaw, KeyLen: 13,
				Typeof:   []rules.Field{{Base: rules.BaseTransport, OffsetBits: 160, LenBits: 104}},
				DataType: rules.TypeVerdict,
				Elements: vmap,
			},
			{
				Name: "upstreams4", KeyType: rules.TypeInteger, KeyLen: 4,
				DataType: rules.TypeIPv4AddrPort, DataLen: 8,
				Elements: []rules.Element{
					{Key: hostU32(0), Data: addrPort(addr4("198.51.100.1"), 53)},
					{Key: hostU32(1), Data: addrPort(addr4("198.51.100.2"), 53)},
				},
			},
			{
				Name: "upstreams6", KeyType: rules.TypeInteger, KeyLen: 4,
				DataType: rules.TypeIPv6AddrPort, DataLen: 20,
				Elements: []rules.Element{
					{Key: hostU32(0), Data: addrPort(addr6("2001:db8::1"), 53)},
					{Key: hostU32(1), Data: addrPort(addr6("2001:db8::2"), 53)},
				},
			},
		},
		Chains: []*rules.Chain{
			{
				Name: "deeper",
				Rules: []rules.Rule{
					{Text: "counter return", Exprs: []rules.Expr{rules.Counter{}, rules.Verdict{Kind: rules.Return}}},
				},
			},
			{
				Name: "check", Comment: "name checks",
				Rules: []rules.Rule{
					{Text: "udp @th,160,104 @names13 counter name blocked limit rate 1/second burst 10 packets log prefix \"nfttest \" drop",
						Exprs: cat(udp(), []rules.Expr{
							rules.Payload{Base: rules.BaseTransport, Offset: 20, Len: 13, Dst: 0},
							rules.Lookup{Set: "names13", Src: 0},
							rules.Counter{Name: "blocked"},
							rules.Limit{Rate: 1, Unit: rules.PerSecond, Burst: 10},
							rules.Log{Prefix: "nfttest "},
							rules.Verdict{Kind: rules.Drop},
						})},
					{Text: "udp @th,160,512 @big counter drop",
						Exprs: cat(udp(), []rules.Expr{
							rules.Payload{Base: rules.BaseTransport, Offset: 20, Len: 64, Dst: 0},
							rules.Lookup{Set: "big", Src: 0},
							rules.Counter{},
							rules.Verdict{Kind: rules.Drop},
						})},
					{Text: "tcp @ih,112,512 map @actions == 1 drop",
						Exprs: []rules.Expr{
							rules.Payload{Base: rules.BaseInner, Offset: 14, Len: 64, Dst: 0},
							rules.Lookup{Set: "actions", Src: 0, Dst: 0, IsMap: true},
							rules.Cmp{Op: rules.CmpEq, Src: 0, Data: hostU32(1)},
							rules.Verdict{Kind: rules.Drop},
						}},
					{Text: "udp @th,160,104 vmap @verdicts",
						Exprs: cat(udp(), []rules.Expr{
							rules.Payload{Base: rules.BaseTransport, Offset: 20, Len: 13, Dst: 0},
							rules.Lookup{Set: "verdicts", Src: 0, IsMap: true},
						})},
					{Text: "ip jhash ip saddr mod 4 seed 0x1 == 0 counter",
						Exprs: cat(ipv4, []rules.Expr{
							rules.Payload{Base: rules.BaseNetwork, Offset: 12, Len: 4, Dst: 1},
							rules.Hash{Src: 1, Dst: 0, Len: 4, Modulus: 4, Seed: 1},
							rules.Cmp{Op: rules.CmpEq, Src: 0, Data: hostU32(0)},
							rules.Counter{},
						})},
				},
			},
			{
				Name: "prerouting-raw", Hook: rules.HookPrerouting, Type: rules.ChainFilter, Priority: -300,
				Rules: []rules.Rule{
					{Text: "ip saddr @clients4 counter name passed jump check",
						Exprs: cat(ipv4, []rules.Expr{
							rules.Payload{Base: rules.BaseNetwork, Offset: 12, Len: 4, Dst: 0},
							rules.Lookup{Set: "clients4", Src: 0},
							rules.Counter{Name: "passed"},
							rules.Verdict{Kind: rules.Jump, Chain: "check"},
						})},
				},
			},
			{
				Name: "forward", Hook: rules.HookForward, Type: rules.ChainFilter, Priority: 0,
				Rules: []rules.Rule{
					{Text: "ct state established,related accept",
						Exprs: []rules.Expr{
							rules.Ct{Key: rules.CtState, Dst: 0},
							rules.Bitwise{Src: 0, Dst: 0, Len: 4, Mask: hostU32(6), Xor: hostU32(0)},
							rules.Cmp{Op: rules.CmpNeq, Src: 0, Data: hostU32(0)},
							rules.Verdict{Kind: rules.Accept},
						}},
				},
			},
			{
				Name: "nat-prerouting", Hook: rules.HookPrerouting, Type: rules.ChainNAT, Priority: -100,
				Rules: []rules.Rule{
					{Text: "ip udp dnat ip to numgen inc mod 2 map @upstreams4",
						Exprs: cat(ipv4, udp(), []rules.Expr{
							rules.Numgen{Dst: 0, Modulus: 2},
							rules.Lookup{Set: "upstreams4", Src: 0, Dst: 0, IsMap: true},
							rules.NAT{Kind: rules.DNAT, Family: rules.IPv4, Addr: 0, Proto: 1, HasProto: true},
						})},
					{Text: "ip6 udp dnat ip6 to numgen inc mod 2 map @upstreams6",
						Exprs: cat(ipv6, udp(), []rules.Expr{
							rules.Numgen{Dst: 0, Modulus: 2},
							rules.Lookup{Set: "upstreams6", Src: 0, Dst: 0, IsMap: true},
							rules.NAT{Kind: rules.DNAT, Family: rules.IPv6, Addr: 0, Proto: 4, HasProto: true},
						})},
				},
			},
			{
				Name: "nat-postrouting", Hook: rules.HookPostrouting, Type: rules.ChainNAT, Priority: 100,
				Rules: []rules.Rule{
					{Text: "udp masquerade", Exprs: cat(udp(), []rules.Expr{rules.Masquerade{}})},
				},
			},
		},
	}
}

// changedRuleset is testRuleset after a change of lists and structure: the
// regular chain "deeper" and the set "upstreams6" (with the rule using it)
// are gone, "names13" holds 12-byte keys (a reshaped set under the same
// name), and "upstreams4" and "big" hold other elements.
func changedRuleset(table string, bigN int) *rules.Ruleset {
	rs := testRuleset(table, bigN)
	rs.Chains = slices.DeleteFunc(rs.Chains, func(c *rules.Chain) bool { return c.Name == "deeper" })
	rs.Sets = slices.DeleteFunc(rs.Sets, func(s *rules.Set) bool { return s.Name == "upstreams6" })
	for _, e := range rs.Set("verdicts").Elements {
		if e.Verdict.Kind == rules.Jump {
			*e.Verdict = rules.Verdict{Kind: rules.Accept}
		}
	}
	n := rs.Set("names13")
	n.KeyLen = 12
	n.Typeof = []rules.Field{{Base: rules.BaseTransport, OffsetBits: 160, LenBits: 96}}
	n.Elements = []rules.Element{{Key: wireName("example.co", 0)}, {Key: wireName("example.io", 0)}}
	rs.Set("upstreams4").Elements = []rules.Element{
		{Key: hostU32(0), Data: addrPort(addr4("198.51.100.3"), 53)},
		{Key: hostU32(1), Data: addrPort(addr4("198.51.100.4"), 5353)},
	}
	big := rs.Set("big")
	for i := range big.Elements {
		big.Elements[i].Key = wireName(fmt.Sprintf("host%07d.changed.example.com", i), 64)
	}
	for _, ch := range rs.Chains {
		for i, r := range ch.Rules {
			for j, e := range r.Exprs {
				if p, ok := e.(rules.Payload); ok && p.Len == 13 && slices.ContainsFunc(r.Exprs, func(e rules.Expr) bool {
					l, ok := e.(rules.Lookup)
					return ok && l.Set == "names13"
				}) {
					p.Len = 12
					ch.Rules[i].Exprs[j] = p
					ch.Rules[i].Text = strings.Replace(r.Text, "@th,160,104", "@th,160,96", 1)
				}
			}
		}
		if ch.Name == "nat-prerouting" {
			ch.Rules = ch.Rules[:1] // the ip6 dnat used upstreams6
		}
	}
	return rs
}
