package rules

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
)

// sim interprets the compiled query-checking chains the way nf_tables
// evaluates them, over a packet given as its transport-header bytes. It is
// the builder's fake kernel: it lets unit tests push thousands of queries
// through the compiled lookup structure without root. The namespace tests
// do the same against the real kernel.
type sim struct {
	l4     byte   // protocol of the packet being run: 17 or 6
	nh     []byte // the IPv4 header of the packet (zeroes unless set)
	iif    string // input interface name
	list   int    // the last list whose outcome chain the packet reached, or -1
	mark   uint32 // skb->mark
	action string // what ended the run in an outcome chain: drop, reject, answer, log
	rs     *Ruleset
	chains map[string]*Chain
	sets   map[string]map[string]*Element
	path   *pathState // set when whole packets run through the base chains (path_test.go)
}

func newSim(rs *Ruleset) *sim {
	s := &sim{rs: rs, chains: map[string]*Chain{}, sets: map[string]map[string]*Element{}, nh: make([]byte, 20)}
	for _, c := range rs.Chains {
		s.chains[c.Name] = c
	}
	for _, set := range rs.Sets {
		m := map[string]*Element{}
		for i := range set.Elements {
			m[string(set.Elements[i].Key)] = &set.Elements[i]
		}
		s.sets[set.Name] = m
	}
	return s
}

// outcome of a query through the chains
const (
	outPass      = "pass"
	outBlocked   = "blocked"
	outMalformed = "malformed"
)

// udpQuery builds the UDP header + DNS message of a query for the wire
// name, with QTYPE A and no additional records.
func udpQuery(wire []byte) []byte {
	msg := dnsQuery(wire)
	th := make([]byte, 8)
	binary.BigEndian.PutUint16(th[0:], 33333)
	binary.BigEndian.PutUint16(th[2:], 53)
	binary.BigEndian.PutUint16(th[4:], uint16(8+len(msg)))
	return append(th, msg...)
}

func dnsQuery(wire []byte) []byte {
	msg := []byte{0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0}
	msg = append(msg, wire...)
	return append(msg, 0, 1, 0, 1)
}

// tcpPayload is the data of a TCP segment carrying one query.
func tcpPayload(wire []byte) []byte {
	msg := dnsQuery(wire)
	return append(binary.BigEndian.AppendUint16(nil, uint16(len(msg))), msg...)
}

// run evaluates the query chain for a transport ("udp" or "tcp") over the
// given base bytes (UDP: header+message; TCP: segment payload).
func (s *sim) run(proto string, pkt []byte) (string, error) {
	s.l4 = map[string]byte{"udp": 17, "tcp": 6}[proto]
	s.list, s.action, s.mark = -1, "", 0
	v, err := s.chain("query-"+proto, pkt, 0)
	if err != nil {
		return "", err
	}
	return v, nil
}

func (s *sim) chain(name string, pkt []byte, depth int) (string, error) {
	if depth > 15 {
		return "", fmt.Errorf("jump depth exceeded at %s", name)
	}
	c, ok := s.chains[name]
	if !ok {
		return "", fmt.Errorf("no chain %s", name)
	}
	if n, err := fmt.Sscanf(name, "list-%d", &s.list); n == 1 && err == nil {
		s.action = ""
	}
	for _, r := range c.Rules {
		v, done, err := s.rule(c, r, pkt, depth)
		if err != nil || done {
			return v, err
		}
	}
	return outPass, nil // falls off the end: return to caller
}

// rule returns (verdict, true) when the rule ends evaluation of the chain.
func (s *sim) rule(c *Chain, r Rule, pkt []byte, depth int) (string, bool, error) {
	var regs [64]byte
	blockedCounter := false
	for _, e := range r.Exprs {
		if s.path != nil {
			if handled, match, accept, err := s.path.expr(s, e, &regs); err != nil || handled {
				switch {
				case err != nil:
					return "", false, err
				case !match:
					return "", false, nil
				case accept:
					return outPass, true, nil
				}
				continue
			}
		}
		switch e := e.(type) {
		case Payload:
			// the transport/inner base of the simulated packet, and its
			// IPv4 header
			data := pkt
			switch e.Base {
			case BaseTransport, BaseInner:
			case BaseNetwork:
				data = s.nh
			default:
				return "", false, fmt.Errorf("sim: base %v", e.Base)
			}
			end := int(e.Offset + e.Len)
			if end > len(data) {
				return "", false, nil // NFT_BREAK
			}
			d := int(e.Dst) * 4
			if e.Len%4 != 0 {
				copy(regs[d+int(e.Len)/4*4:d+int(e.Len)/4*4+4], []byte{0, 0, 0, 0})
			}
			copy(regs[d:], data[e.Offset:end])
		case PayloadWrite:
			data := pkt
			if e.Base == BaseNetwork {
				data = s.nh
			}
			copy(data[e.Offset:e.Offset+e.Len], regs[int(e.Src)*4:])
		case Immediate:
			copy(regs[int(e.Dst)*4:], e.Data)
		case MetaSet:
			s.mark = binary.NativeEndian.Uint32(regs[int(e.Src)*4:])
		case Reject:
			s.action = ActionReject
			return outBlocked, true, nil
		case Cmp:
			got := regs[int(e.Src)*4 : int(e.Src)*4+len(e.Data)]
			c := bytes.Compare(got, e.Data)
			ok := map[CmpOp]bool{CmpEq: c == 0, CmpNeq: c != 0, CmpLt: c < 0, CmpLte: c <= 0, CmpGt: c > 0, CmpGte: c >= 0}[e.Op]
			if !ok {
				return "", false, nil
			}
		case Bitwise:
			// the kernel works on whole 32-bit words; bytes past Len use a
			// zero mask and xor
			words := (int(e.Len) + 3) / 4
			for i := 0; i < words*4; i++ {
				var m, x byte
				if i < int(e.Len) {
					m, x = e.Mask[i], e.Xor[i]
				}
				regs[int(e.Dst)*4+i] = regs[int(e.Src)*4+i]&m ^ x
			}
		case Byteorder:
			// hton on a little-endian machine: each word reversed
			src := bytes.Clone(regs[int(e.Src)*4 : int(e.Src)*4+int(e.Len)])
			for w := 0; w < int(e.Len); w += int(e.Size) {
				slices.Reverse(src[w : w+int(e.Size)])
			}
			copy(regs[int(e.Dst)*4:], src)
		case Lookup:
			set := s.rs.Set(e.Set)
			key := regs[int(e.Src)*4 : int(e.Src)*4+int(set.KeyLen)]
			el := s.sets[e.Set][string(key)]
			if set.Interval {
				el = nil
				for i := range set.Elements {
					iv := &set.Elements[i]
					if bytes.Compare(iv.Key, key) <= 0 && (len(iv.KeyEnd) == 0 || bytes.Compare(key, iv.KeyEnd) < 0) {
						el = iv
						break
					}
				}
			}
			if (el != nil) == e.Invert {
				return "", false, nil
			}
			if set.IsMap() && set.DataType != TypeVerdict && !e.Invert {
				// a data map writes the element's data
				if len(el.Data) != int(set.DataLen) {
					return "", false, fmt.Errorf("sim: map %s: element data of %d bytes", e.Set, len(el.Data))
				}
				copy(regs[int(e.Dst)*4:], el.Data)
				continue
			}
			if set.DataType == TypeVerdict {
				// a verdict map: its element's verdict ends the rule
				v := el.Verdict
				out, err := s.chain(v.Chain, pkt, depth+1)
				if v.Kind == Jump && err == nil && out == outPass {
					return "", false, nil
				}
				return out, true, err
			}
		case Hash:
			h := nftHash(regs[int(e.Src)*4:int(e.Src)*4+int(e.Len)], e.Seed, e.Modulus)
			binary.LittleEndian.PutUint32(regs[int(e.Dst)*4:], h)
		case Counter:
			if strings.HasPrefix(e.Name, CounterBlocked) {
				blockedCounter = true
			}
		case Meta:
			// The simulated packet is IPv4 over the run's protocol.
			switch e.Key {
			case MetaIifname:
				name := make([]byte, 16)
				copy(name, s.iif)
				copy(regs[int(e.Dst)*4:], name)
			case MetaMark:
				binary.NativeEndian.PutUint32(regs[int(e.Dst)*4:], s.mark)
			default:
				v := map[MetaKey]byte{MetaNFProto: 2, MetaL4Proto: s.l4}[e.Key]
				copy(regs[int(e.Dst)*4:], []byte{v, 0, 0, 0})
			}
		case Limit, Log:
		case Verdict:
			switch e.Kind {
			case Drop:
				if strings.HasPrefix(c.Name, "list-") || blockedCounter {
					s.action = ActionDrop
					return outBlocked, true, nil
				}
				return outMalformed, true, nil
			case Accept:
				if s.mark == AnswerMark {
					// turned into an answer, sent back by the aux table
					s.action = "answer"
					return outBlocked, true, nil
				}
				return outPass, true, nil
			case Return:
				if strings.HasPrefix(c.Name, "list-") {
					s.action = ActionLog
				}
				return outPass, true, nil
			case Jump:
				v, err := s.chain(e.Chain, pkt, depth+1)
				if err != nil || v != outPass {
					return v, true, err
				}
			case Goto:
				v, err := s.chain(e.Chain, pkt, depth+1)
				return v, true, err
			}
		default:
			return "", false, fmt.Errorf("sim: %T not modelled", e)
		}
	}
	return "", false, nil
}
