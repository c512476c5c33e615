package rules

import (
	"encoding/binary"
	"fmt"
)

// One query per TCP segment.
//
// The TCP chains read each segment with data as one length-prefixed query
// at its start. A segment holding more (a second query after the first) or
// less (the head of a query whose rest comes in the next segment, which is
// then read as a query of its own) carries bytes the name match never sees:
// a client could pipeline a harmless query and a blocked one in one write.
// nf_tables loads only at fixed offsets, and the first message's end
// depends on its length prefix, so a verdict map on the prefix P jumps to a
// chain for that P, tcp-end-P, which checks at fixed offsets that the
// segment holds exactly 2+P bytes: none at offset P+2, one at P+1. A
// segment failing that, or whose prefix is out of the range of a query, is
// counted as unusual_layout, and dropped with --strict. The check needs
// neither the IP nor the TCP header length (@ih starts after both).

// Bounds of the length prefix of a checked TCP query: a header, the root
// name and QTYPE/QCLASS at least; at most, a 255-byte name with EDNS
// options and block padding (RFC 8467 pads queries to 128 bytes) fits with
// room to spare.
const (
	minTCPQuery = 12 + 1 + 4
	maxTCPQuery = 512
)

// tcpQueryEnd is the verdict map from the length prefix to tcp-end-P.
const tcpQueryEnd = "tcp-query-end"

func tcpEndChain(p int) string { return fmt.Sprintf("tcp-end-%d", p) }

// tcpOneQueryRules are the rules of the query-tcp chain, after the header
// gate, that check the segment holds exactly one query; they add the map
// and the chains it jumps to.
func (c *compiler) tcpOneQueryRules() []Rule {
	m := &Set{
		Name:     tcpQueryEnd,
		Comment:  "TCP length prefix -> the check that the segment ends with that query",
		KeyType:  TypeRaw,
		KeyLen:   2,
		Typeof:   []Field{{Base: BaseInner, OffsetBits: 0, LenBits: 16}},
		DataType: TypeVerdict,
	}
	for p := minTCPQuery; p <= maxTCPQuery; p++ {
		m.Elements = append(m.Elements, Element{
			Key:     binary.BigEndian.AppendUint16(nil, uint16(p)),
			Verdict: &Verdict{Kind: Jump, Chain: tcpEndChain(p)},
		})
		end := uint32(2 + p) // the first byte after the query
		ch := &Chain{Name: tcpEndChain(p), Comment: fmt.Sprintf("a TCP segment holding one query of %d bytes is %d bytes long", p, end)}
		ch.Rules = append(ch.Rules,
			c.unusual(newRule().byteAt(BaseInner, end, CmpGte, 0)), // bytes after the query
			newRule().byteAt(BaseInner, end-1, CmpGte, 0).verdict(Return, "").rule(),
			c.unusual(newRule()), // the query goes on in a later segment
		)
		c.tcpEndChains = append(c.tcpEndChains, ch)
	}
	c.rs.Sets = append(c.rs.Sets, m)

	prefix := func(op CmpOp, v int) *rb {
		return newRule().add(fmt.Sprintf("@ih,0,16 %s%d", opText(op), v),
			Payload{Base: BaseInner, Offset: 0, Len: 2, Dst: 0},
			Cmp{Op: op, Src: 0, Data: binary.BigEndian.AppendUint16(nil, uint16(v))})
	}
	return []Rule{
		c.unusual(prefix(CmpLt, minTCPQuery)),
		c.unusual(prefix(CmpGt, maxTCPQuery)),
		newRule().add("@ih,0,16 vmap @"+tcpQueryEnd,
			Payload{Base: BaseInner, Offset: 0, Len: 2, Dst: 0},
			Lookup{Set: tcpQueryEnd, Src: 0, IsMap: true}).rule(),
	}
}

// unusual ends r with the unusual_layout counter, and a drop with --strict.
func (c *compiler) unusual(r *rb) Rule {
	r.counter(CounterUnusual)
	if c.s.Strict {
		r.verdict(Drop, "")
	}
	return r.rule()
}
