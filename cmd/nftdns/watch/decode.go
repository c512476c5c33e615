// Package watch reads the queries an nftdns ruleset logs to an nflog group
// and decodes them: the nflog subscription (nflog.go) and the packet and
// DNS decoding (this file), which is pure so it can be fuzzed.
package watch

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/miekg/dns"
)

// Query is what a logged packet says about the query it carries.
type Query struct {
	Src, Dst netip.AddrPort // the client and the address it asked
	Proto    string         // "udp" or "tcp"
	Name     string         // the question name, presentation form with a final dot
	Type     uint16         // the question type
}

// TypeString is the question type's mnemonic (A, AAAA, TYPE65534).
func (q Query) TypeString() string {
	if s, ok := dns.TypeToString[q.Type]; ok {
		return s
	}
	return fmt.Sprintf("TYPE%d", q.Type)
}

// IP protocol numbers and IPv6 extension headers the decoder walks.
const (
	protoTCP      = 6
	protoUDP      = 17
	ext6HopByHop  = 0
	ext6Routing   = 43
	ext6Fragment  = 44
	ext6DestOpts  = 60
	maxExtHeaders = 8 // a bound on the walk; more is not a query we logged
)

// Decode reads a network-layer packet (what nflog hands over for an inet
// table: the IPv4 or IPv6 header first) holding a DNS query over UDP or
// TCP. It never panics on bad input; it returns an error saying which
// layer it could not read. Over TCP the DNS message follows a 2-byte
// length prefix; a segment that holds only the start of a message still
// decodes when its question is complete.
func Decode(pkt []byte) (Query, error) {
	var q Query
	if len(pkt) < 1 {
		return q, errors.New("empty packet")
	}
	var (
		src, dst netip.Addr
		proto    byte
		l4       []byte
	)
	switch pkt[0] >> 4 {
	case 4:
		if len(pkt) < 20 {
			return q, fmt.Errorf("ipv4: %d bytes, want at least 20", len(pkt))
		}
		ihl := int(pkt[0]&0x0f) * 4
		total := int(binary.BigEndian.Uint16(pkt[2:4]))
		if ihl < 20 || total < ihl || total > len(pkt) {
			return q, fmt.Errorf("ipv4: header length %d, total length %d, %d bytes captured", ihl, total, len(pkt))
		}
		if off := binary.BigEndian.Uint16(pkt[6:8]) & 0x1fff; off != 0 {
			return q, errors.New("ipv4: a non-first fragment")
		}
		src, dst = netip.AddrFrom4([4]byte(pkt[12:16])), netip.AddrFrom4([4]byte(pkt[16:20]))
		proto, l4 = pkt[9], pkt[ihl:total]
	case 6:
		if len(pkt) < 40 {
			return q, fmt.Errorf("ipv6: %d bytes, want at least 40", len(pkt))
		}
		plen := int(binary.BigEndian.Uint16(pkt[4:6]))
		if 40+plen > len(pkt) {
			return q, fmt.Errorf("ipv6: payload length %d, %d bytes captured", plen, len(pkt)-40)
		}
		src, dst = netip.AddrFrom16([16]byte(pkt[8:24])), netip.AddrFrom16([16]byte(pkt[24:40]))
		proto, l4 = pkt[6], pkt[40:40+plen]
		var err error
		if proto, l4, err = skipExt6(proto, l4); err != nil {
			return q, err
		}
	default:
		return q, fmt.Errorf("ip version %d", pkt[0]>>4)
	}

	var msg []byte
	var sport, dport uint16
	switch proto {
	case protoUDP:
		if len(l4) < 8 {
			return q, fmt.Errorf("udp: %d bytes, want at least 8", len(l4))
		}
		ulen := int(binary.BigEndian.Uint16(l4[4:6]))
		if ulen < 8 || ulen > len(l4) {
			return q, fmt.Errorf("udp: length %d, %d bytes present", ulen, len(l4))
		}
		sport, dport = binary.BigEndian.Uint16(l4[0:2]), binary.BigEndian.Uint16(l4[2:4])
		q.Proto, msg = "udp", l4[8:ulen]
	case protoTCP:
		if len(l4) < 20 {
			return q, fmt.Errorf("tcp: %d bytes, want at least 20", len(l4))
		}
		doff := int(l4[12]>>4) * 4
		if doff < 20 || doff > len(l4) {
			return q, fmt.Errorf("tcp: data offset %d, %d bytes present", doff, len(l4))
		}
		sport, dport = binary.BigEndian.Uint16(l4[0:2]), binary.BigEndian.Uint16(l4[2:4])
		data := l4[doff:]
		if len(data) < 2 {
			return q, errors.New("tcp: no dns length prefix in the segment")
		}
		n := int(binary.BigEndian.Uint16(data[0:2]))
		msg = data[2:]
		if n < len(msg) {
			msg = msg[:n] // only the first message of the segment
		}
		q.Proto = "tcp"
	default:
		return q, fmt.Errorf("ip protocol %d is neither udp nor tcp", proto)
	}
	q.Src, q.Dst = netip.AddrPortFrom(src, sport), netip.AddrPortFrom(dst, dport)
	name, typ, err := question(msg)
	if err != nil {
		return q, fmt.Errorf("dns: %w", err)
	}
	q.Name, q.Type = name, typ
	return q, nil
}

// skipExt6 walks IPv6 extension headers to the transport header.
func skipExt6(next byte, b []byte) (byte, []byte, error) {
	for range maxExtHeaders {
		switch next {
		case ext6HopByHop, ext6Routing, ext6DestOpts:
			if len(b) < 8 {
				return 0, nil, fmt.Errorf("ipv6: extension header %d cut short", next)
			}
			n := (int(b[1]) + 1) * 8
			if n > len(b) {
				return 0, nil, fmt.Errorf("ipv6: extension header %d of %d bytes, %d present", next, n, len(b))
			}
			next, b = b[0], b[n:]
		case ext6Fragment:
			if len(b) < 8 {
				return 0, nil, errors.New("ipv6: fragment header cut short")
			}
			if binary.BigEndian.Uint16(b[2:4])&0xfff8 != 0 {
				return 0, nil, errors.New("ipv6: a non-first fragment")
			}
			next, b = b[0], b[8:]
		default:
			return next, b, nil
		}
	}
	return 0, nil, fmt.Errorf("ipv6: more than %d extension headers", maxExtHeaders)
}

// question returns the first question of a DNS message. It unpacks the
// whole message with miekg/dns when it can, and otherwise reads just the
// header and the question, so a message cut short after its question (a
// TCP segment, a capture limit) still names its query.
func question(msg []byte) (string, uint16, error) {
	m := new(dns.Msg)
	if err := m.Unpack(msg); err == nil {
		if len(m.Question) == 0 {
			return "", 0, errors.New("no question")
		}
		return m.Question[0].Name, m.Question[0].Qtype, nil
	}
	if len(msg) < 12 {
		return "", 0, fmt.Errorf("message of %d bytes, shorter than a header", len(msg))
	}
	if binary.BigEndian.Uint16(msg[4:6]) == 0 {
		return "", 0, errors.New("no question")
	}
	name, off, err := dns.UnpackDomainName(msg, 12)
	if err != nil {
		return "", 0, fmt.Errorf("question name: %w", err)
	}
	if off+4 > len(msg) {
		return "", 0, errors.New("question cut short")
	}
	return name, binary.BigEndian.Uint16(msg[off : off+2]), nil
}
