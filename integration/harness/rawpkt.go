package harness

// Raw packet builders for the evasion tests: IPv4 headers with options and
// fragments, IPv6 with extension headers and fragments, UDP with a correct
// checksum, and byte-level DNS patches. They are pure functions (no I/O) so
// they can be unit tested without root; RawLink.Send (rawsock.go) puts
// their output on the wire unchanged.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// IP protocol numbers and IPv6 extension header types used here.
const (
	ProtoTCP      = 6
	ProtoUDP      = 17
	ExtHopByHop   = 0
	ExtFragment   = 44
	ExtDestOpts   = 60
	ExtNoNext     = 59
	ipv4HeaderLen = 20
	ipv6HeaderLen = 40
	udpHeaderLen  = 8
)

// IPv4 option bytes (RFC 791).
const (
	IPv4OptEOL         = 0
	IPv4OptNOP         = 1
	IPv4OptRecordRoute = 7
)

// checksum is the Internet checksum (RFC 1071) of b, starting from sum.
func checksum(sum uint32, b []byte) uint16 {
	for len(b) >= 2 {
		sum += uint32(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// pseudoSum is the partial sum of the transport pseudo-header (RFC 768 for
// IPv4, RFC 8200 §8.1 for IPv6).
func pseudoSum(src, dst netip.Addr, proto uint8, length int) uint32 {
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(binary.BigEndian.Uint16(b[i:]))
		}
	}
	s, d := src.AsSlice(), dst.AsSlice()
	add(s)
	add(d)
	sum += uint32(proto)
	sum += uint32(length) & 0xffff
	sum += uint32(length) >> 16
	return sum
}

// UDPSegment returns a UDP header and payload with the length and checksum filled
// in for the given addresses (src and dst must be of one family).
func UDPSegment(src, dst netip.AddrPort, payload []byte) []byte {
	b := make([]byte, udpHeaderLen+len(payload))
	binary.BigEndian.PutUint16(b[0:], src.Port())
	binary.BigEndian.PutUint16(b[2:], dst.Port())
	binary.BigEndian.PutUint16(b[4:], uint16(len(b)))
	copy(b[udpHeaderLen:], payload)
	c := checksum(pseudoSum(src.Addr(), dst.Addr(), ProtoUDP, len(b)), b)
	if c == 0 {
		c = 0xffff // zero means "no checksum" (and is invalid over IPv6)
	}
	binary.BigEndian.PutUint16(b[6:], c)
	return b
}

// IPv4 describes one IPv4 packet (or fragment) to build.
type IPv4 struct {
	Src, Dst netip.Addr
	Proto    uint8
	ID       uint16
	TTL      uint8  // 64 if zero
	Options  []byte // raw options, padded with EOL to a multiple of 4; at most 40 bytes
	FragOff  int    // fragment offset in bytes (a multiple of 8)
	More     bool   // MF flag
	DF       bool   // DF flag
}

// Build returns the IPv4 header (with its checksum) followed by payload.
func (h IPv4) Build(payload []byte) ([]byte, error) {
	if !h.Src.Is4() || !h.Dst.Is4() {
		return nil, errors.New("ipv4: addresses must be IPv4")
	}
	opts := append([]byte(nil), h.Options...)
	for len(opts)%4 != 0 {
		opts = append(opts, IPv4OptEOL)
	}
	if len(opts) > 40 {
		return nil, fmt.Errorf("ipv4: %d bytes of options, at most 40 fit", len(opts))
	}
	if h.FragOff%8 != 0 || h.FragOff/8 > 0x1fff {
		return nil, fmt.Errorf("ipv4: bad fragment offset %d", h.FragOff)
	}
	hl := ipv4HeaderLen + len(opts)
	total := hl + len(payload)
	if total > 0xffff {
		return nil, fmt.Errorf("ipv4: packet of %d bytes", total)
	}
	ttl := h.TTL
	if ttl == 0 {
		ttl = 64
	}
	b := make([]byte, total)
	b[0] = 4<<4 | byte(hl/4)
	binary.BigEndian.PutUint16(b[2:], uint16(total))
	binary.BigEndian.PutUint16(b[4:], h.ID)
	frag := uint16(h.FragOff / 8)
	if h.More {
		frag |= 0x2000
	}
	if h.DF {
		frag |= 0x4000
	}
	binary.BigEndian.PutUint16(b[6:], frag)
	b[8] = ttl
	b[9] = h.Proto
	src, dst := h.Src.As4(), h.Dst.As4()
	copy(b[12:], src[:])
	copy(b[16:], dst[:])
	copy(b[ipv4HeaderLen:], opts)
	binary.BigEndian.PutUint16(b[10:], checksum(0, b[:hl]))
	copy(b[hl:], payload)
	return b, nil
}

// Fragments4 splits a transport segment into IPv4 fragments whose payloads
// have the given sizes (all but the last a multiple of 8; the last size may
// be 0 to mean "the rest"). h gives the addresses, protocol, ID and options
// (options are copied into every fragment here, which is allowed for the
// options these tests use). The fragments are returned in offset order.
func Fragments4(h IPv4, l4 []byte, sizes []int) ([][]byte, error) {
	var out [][]byte
	off := 0
	for i, n := range sizes {
		last := i == len(sizes)-1
		if last && n == 0 {
			n = len(l4) - off
		}
		if !last && n%8 != 0 {
			return nil, fmt.Errorf("fragment %d: size %d is not a multiple of 8", i, n)
		}
		if off+n > len(l4) || (last && off+n != len(l4)) {
			return nil, fmt.Errorf("fragment sizes %v do not add up to %d bytes", sizes, len(l4))
		}
		f := h
		f.FragOff, f.More = off, !last
		p, err := f.Build(l4[off : off+n])
		if err != nil {
			return nil, err
		}
		out = append(out, p)
		off += n
	}
	return out, nil
}

// ExtHeader is one IPv6 extension header: its type (ExtHopByHop,
// ExtDestOpts, ...) and its body after the next-header byte. Build one with
// OptionsHeader or FragmentHeader.
type ExtHeader struct {
	Type uint8
	Body []byte // everything after the next-header byte
}

// OptionsHeader returns a hop-by-hop or destination-options header holding
// the given TLV options, padded with PadN/Pad1 to a multiple of 8 bytes.
func OptionsHeader(typ uint8, opts ...[]byte) ExtHeader {
	body := []byte{0} // hdr ext len, set below
	for _, o := range opts {
		body = append(body, o...)
	}
	if pad := (8 - (len(body)+1)%8) % 8; pad == 1 {
		body = append(body, 0) // Pad1
	} else if pad > 1 {
		body = append(body, 1, byte(pad-2)) // PadN
		body = append(body, make([]byte, pad-2)...)
	}
	body[0] = byte((len(body)+1)/8 - 1)
	return ExtHeader{Type: typ, Body: body}
}

// FragmentHeader returns an IPv6 fragment header (RFC 8200 §4.5).
func FragmentHeader(off int, more bool, id uint32) ExtHeader {
	body := make([]byte, 7)
	v := uint16(off/8) << 3
	if more {
		v |= 1
	}
	binary.BigEndian.PutUint16(body[1:], v)
	binary.BigEndian.PutUint32(body[3:], id)
	return ExtHeader{Type: ExtFragment, Body: body}
}

// chain serialises extension headers, each pointing at the next one and the
// last at proto.
func chain(exts []ExtHeader, proto uint8) []byte {
	var b []byte
	for i, e := range exts {
		next := proto
		if i+1 < len(exts) {
			next = exts[i+1].Type
		}
		b = append(b, next)
		b = append(b, e.Body...)
	}
	return b
}

// firstType is the next-header value that leads into exts, or proto.
func firstType(exts []ExtHeader, proto uint8) uint8 {
	if len(exts) > 0 {
		return exts[0].Type
	}
	return proto
}

// IPv6 returns an IPv6 packet: the fixed header, the extension headers in
// order, then the transport segment of protocol proto.
func IPv6(src, dst netip.Addr, exts []ExtHeader, proto uint8, l4 []byte) ([]byte, error) {
	if !src.Is6() || !dst.Is6() || src.Is4In6() || dst.Is4In6() {
		return nil, errors.New("ipv6: addresses must be IPv6")
	}
	rest := append(chain(exts, proto), l4...)
	if len(rest) > 0xffff {
		return nil, fmt.Errorf("ipv6: payload of %d bytes", len(rest))
	}
	b := make([]byte, ipv6HeaderLen, ipv6HeaderLen+len(rest))
	b[0] = 6 << 4
	binary.BigEndian.PutUint16(b[4:], uint16(len(rest)))
	b[6] = firstType(exts, proto)
	b[7] = 64
	s, d := src.As16(), dst.As16()
	copy(b[8:], s[:])
	copy(b[24:], d[:])
	return append(b, rest...), nil
}

// Fragments6 fragments an IPv6 packet: unfrag are the extension headers
// before the fragment header (repeated in every fragment), inner the ones
// after it (part of the fragmentable data, with the transport segment l4 of
// protocol proto). sizes are the fragmentable bytes per fragment, as for
// Fragments4. Fragments are returned in offset order.
func Fragments6(src, dst netip.Addr, unfrag, inner []ExtHeader, proto uint8, l4 []byte, id uint32, sizes []int) ([][]byte, error) {
	data := append(chain(inner, proto), l4...)
	next := firstType(inner, proto)
	var out [][]byte
	off := 0
	for i, n := range sizes {
		last := i == len(sizes)-1
		if last && n == 0 {
			n = len(data) - off
		}
		if !last && n%8 != 0 {
			return nil, fmt.Errorf("fragment %d: size %d is not a multiple of 8", i, n)
		}
		if off+n > len(data) || (last && off+n != len(data)) {
			return nil, fmt.Errorf("fragment sizes %v do not add up to %d bytes", sizes, len(data))
		}
		fh := FragmentHeader(off, !last, id)
		exts := append(append([]ExtHeader(nil), unfrag...), fh)
		// The fragment header's next header is that of the fragmentable
		// part, whatever this fragment holds.
		p, err := IPv6(src, dst, exts, next, data[off:off+n])
		if err != nil {
			return nil, err
		}
		out = append(out, p)
		off += n
	}
	return out, nil
}

// UDPPacket builds a whole IPv4 or IPv6 packet (no options, no extension
// headers) carrying payload in UDP from src to dst.
func UDPPacket(src, dst netip.AddrPort, payload []byte) ([]byte, error) {
	l4 := UDPSegment(src, dst, payload)
	if src.Addr().Is4() {
		return IPv4{Src: src.Addr(), Dst: dst.Addr(), Proto: ProtoUDP, ID: 1}.Build(l4)
	}
	return IPv6(src.Addr(), dst.Addr(), nil, ProtoUDP, l4)
}

// DNS header field offsets and flag bits, for patching packed messages.
const (
	DNSHeaderLen = 12
	dnsFlagsOff  = 2
	dnsQDOff     = 4
	dnsAROff     = 10
	// FlagQR is the response bit of the flags word.
	FlagQR = 0x8000
)

// SetQR sets or clears the QR bit of a packed DNS message.
func SetQR(msg []byte, on bool) {
	f := binary.BigEndian.Uint16(msg[dnsFlagsOff:])
	if on {
		f |= FlagQR
	} else {
		f &^= FlagQR
	}
	binary.BigEndian.PutUint16(msg[dnsFlagsOff:], f)
}

// SetOpcode writes the 4-bit opcode of a packed DNS message.
func SetOpcode(msg []byte, op int) {
	f := binary.BigEndian.Uint16(msg[dnsFlagsOff:])
	f = f&^0x7800 | uint16(op&0xf)<<11
	binary.BigEndian.PutUint16(msg[dnsFlagsOff:], f)
}

// SetQDCount and SetARCount overwrite a section count of a packed message.
func SetQDCount(msg []byte, n uint16) { binary.BigEndian.PutUint16(msg[dnsQDOff:], n) }

// SetARCount overwrites the additional-record count of a packed message.
func SetARCount(msg []byte, n uint16) { binary.BigEndian.PutUint16(msg[dnsAROff:], n) }

// WireName encodes a presentation name as uncompressed wire labels ending
// with the root byte, keeping the letter case. It does not validate.
func WireName(name string) []byte {
	var b []byte
	for _, l := range splitLabels(name) {
		b = append(b, byte(len(l)))
		b = append(b, l...)
	}
	return append(b, 0)
}

// WireLabels encodes labels without the terminating root byte (for names
// that go on with a compression pointer).
func WireLabels(name string) []byte {
	b := WireName(name)
	return b[:len(b)-1]
}

func splitLabels(name string) []string {
	var out []string
	start := 0
	for i := 0; i <= len(name); i++ {
		if i == len(name) || name[i] == '.' {
			if i > start {
				out = append(out, name[start:i])
			}
			start = i + 1
		}
	}
	return out
}

// Pointer returns a two-byte compression pointer to offset off.
func Pointer(off int) []byte { return []byte{0xC0 | byte(off>>8&0x3f), byte(off)} }
