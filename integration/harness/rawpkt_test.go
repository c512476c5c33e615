package harness

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/miekg/dns"
	"golang.org/x/net/ipv4"
)

var (
	tSrc4 = netip.MustParseAddrPort("198.18.1.2:40000")
	tDst4 = netip.MustParseAddrPort("198.18.1.1:53")
	tSrc6 = netip.MustParseAddrPort("[2001:db8:1::2]:40000")
	tDst6 = netip.MustParseAddrPort("[2001:db8:1::1]:53")
)

// A packet including its checksum field sums to 0xffff (checksum 0).
func TestUDPChecksumVerifies(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ src, dst netip.AddrPort }{{tSrc4, tDst4}, {tSrc6, tDst6}} {
		for _, n := range []int{0, 1, 29, 512} {
			seg := UDPSegment(c.src, c.dst, bytes.Repeat([]byte{0xa5}, n))
			if got := int(binary.BigEndian.Uint16(seg[4:])); got != len(seg) {
				t.Errorf("%v len %d: length field %d", c.src, n, got)
			}
			if binary.BigEndian.Uint16(seg[6:]) == 0 {
				t.Errorf("%v len %d: zero checksum", c.src, n)
			}
			if s := checksum(pseudoSum(c.src.Addr(), c.dst.Addr(), ProtoUDP, len(seg)), seg); s != 0 {
				t.Errorf("%v len %d: checksum does not verify (residue %#x)", c.src, n, s)
			}
		}
	}
}

func TestIPv4Build(t *testing.T) {
	t.Parallel()
	opts := []byte{IPv4OptNOP, IPv4OptRecordRoute, 7, 4, 0, 0, 0} // padded to 8
	p, err := IPv4{Src: tSrc4.Addr(), Dst: tDst4.Addr(), Proto: ProtoUDP, ID: 0x1234, Options: opts, FragOff: 16, More: true}.Build([]byte("payload!"))
	if err != nil {
		t.Fatal(err)
	}
	h, err := ipv4.ParseHeader(p)
	if err != nil {
		t.Fatal(err)
	}
	if h.Len != 28 || h.TotalLen != len(p) || h.ID != 0x1234 || h.FragOff*8 != 16 || h.Flags != ipv4.MoreFragments || h.Protocol != ProtoUDP || h.TTL != 64 {
		t.Errorf("header %+v", h)
	}
	if !bytes.Equal(h.Options, append(opts, IPv4OptEOL)) {
		t.Errorf("options %x", h.Options)
	}
	if checksum(0, p[:h.Len]) != 0 {
		t.Error("header checksum does not verify")
	}
	if !bytes.Equal(p[h.Len:], []byte("payload!")) {
		t.Error("payload")
	}
	for _, bad := range []IPv4{
		{Src: tSrc4.Addr(), Dst: tDst6.Addr()},
		{Src: tSrc4.Addr(), Dst: tDst4.Addr(), Options: make([]byte, 41)},
		{Src: tSrc4.Addr(), Dst: tDst4.Addr(), FragOff: 3},
	} {
		if _, err := bad.Build(nil); err == nil {
			t.Errorf("%+v: want an error", bad)
		}
	}
}

// Fragments put back together by offset give the original segment, and
// only the last has MF clear.
func TestFragments4(t *testing.T) {
	t.Parallel()
	l4 := UDPSegment(tSrc4, tDst4, bytes.Repeat([]byte("0123456789"), 5)) // 58 bytes
	frags, err := Fragments4(IPv4{Src: tSrc4.Addr(), Dst: tDst4.Addr(), Proto: ProtoUDP, ID: 7}, l4, []int{24, 16, 0})
	if err != nil {
		t.Fatal(err)
	}
	if len(frags) != 3 {
		t.Fatalf("%d fragments", len(frags))
	}
	got := make([]byte, len(l4))
	for i, f := range frags {
		h, err := ipv4.ParseHeader(f)
		if err != nil {
			t.Fatal(err)
		}
		if more := h.Flags&ipv4.MoreFragments != 0; more != (i < 2) || h.ID != 7 {
			t.Errorf("fragment %d: %+v", i, h)
		}
		copy(got[h.FragOff*8:], f[h.Len:])
	}
	if !bytes.Equal(got, l4) {
		t.Error("reassembly differs")
	}
	if _, err := Fragments4(IPv4{Src: tSrc4.Addr(), Dst: tDst4.Addr()}, l4, []int{20, 0}); err == nil {
		t.Error("size 20 for a non-last fragment: want an error")
	}
	if _, err := Fragments4(IPv4{Src: tSrc4.Addr(), Dst: tDst4.Addr()}, l4, []int{24, 16}); err == nil {
		t.Error("sizes not covering the segment: want an error")
	}
}

func TestOptionsHeaderPadding(t *testing.T) {
	t.Parallel()
	for _, opt := range [][]byte{nil, {0x1e, 0}, {0x1e, 3, 1, 2, 3}, {0x1e, 4, 1, 2, 3, 4}, {0x1e, 20}} {
		h := OptionsHeader(ExtDestOpts, opt)
		if n := 1 + len(h.Body); n%8 != 0 || int(h.Body[0]) != n/8-1 {
			t.Errorf("option %x: header of %d bytes, hdr ext len %d", opt, n, h.Body[0])
		}
	}
}

// walk follows an IPv6 extension header chain to the upper-layer header, or
// up to the end of a fragment header (what follows is fragmentable data).
func walk(t *testing.T, p []byte) (types []uint8, proto uint8, l4 []byte) {
	t.Helper()
	if p[0]>>4 != 6 || int(binary.BigEndian.Uint16(p[4:]))+ipv6HeaderLen != len(p) {
		t.Fatalf("bad ipv6 header % x", p[:8])
	}
	next, off := p[6], ipv6HeaderLen
	for next == ExtHopByHop || next == ExtDestOpts || next == ExtFragment {
		types = append(types, next)
		n := 8
		if next != ExtFragment {
			n = (int(p[off+1]) + 1) * 8
		}
		next, off = p[off], off+n
		if types[len(types)-1] == ExtFragment {
			break
		}
	}
	return types, next, p[off:]
}

func TestIPv6ExtensionChain(t *testing.T) {
	t.Parallel()
	seg := UDPSegment(tSrc6, tDst6, []byte("q"))
	p, err := IPv6(tSrc6.Addr(), tDst6.Addr(), []ExtHeader{OptionsHeader(ExtHopByHop), OptionsHeader(ExtDestOpts, []byte{0x1e, 9})}, ProtoUDP, seg)
	if err != nil {
		t.Fatal(err)
	}
	types, proto, l4 := walk(t, p)
	if !bytes.Equal(types, []uint8{ExtHopByHop, ExtDestOpts}) || proto != ProtoUDP || !bytes.Equal(l4, seg) {
		t.Errorf("chain %v proto %d l4 % x", types, proto, l4)
	}
}

// IPv6 fragments: each carries the unfragmentable headers and a fragment
// header; the fragmentable parts, joined by offset, are the inner headers
// and the segment.
func TestFragments6(t *testing.T) {
	t.Parallel()
	seg := UDPSegment(tSrc6, tDst6, bytes.Repeat([]byte("abcdefgh"), 6))
	inner := []ExtHeader{OptionsHeader(ExtDestOpts)}
	frags, err := Fragments6(tSrc6.Addr(), tDst6.Addr(), []ExtHeader{OptionsHeader(ExtHopByHop)}, inner, ProtoUDP, seg, 0xabcd, []int{16, 8, 0})
	if err != nil {
		t.Fatal(err)
	}
	want := append(chain(inner, ProtoUDP), seg...)
	got := make([]byte, len(want))
	for i, f := range frags {
		types, proto, data := walk(t, f)
		if !bytes.Equal(types, []uint8{ExtHopByHop, ExtFragment}) || proto != ExtDestOpts {
			t.Fatalf("fragment %d: chain %v, next %d", i, types, proto)
		}
		fh := f[len(f)-len(data)-8:]
		v := binary.BigEndian.Uint16(fh[2:])
		off, more := int(v>>3)*8, v&1 == 1
		if more != (i < 2) || binary.BigEndian.Uint32(fh[4:]) != 0xabcd {
			t.Errorf("fragment %d: header % x", i, fh)
		}
		copy(got[off:], data)
	}
	if !bytes.Equal(got, want) {
		t.Error("reassembly differs")
	}
}

func TestDNSPatches(t *testing.T) {
	t.Parallel()
	m := new(dns.Msg)
	m.SetQuestion("blocked.example.", dns.TypeA)
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	SetQR(b, true)
	SetOpcode(b, dns.OpcodeUpdate)
	SetQDCount(b, 2)
	SetARCount(b, 3)
	var h dns.Msg
	if err := h.Unpack(b); err == nil {
		t.Fatal("QDCOUNT 2 with one question should not unpack")
	}
	if flags := binary.BigEndian.Uint16(b[2:]); flags&FlagQR == 0 || int(flags>>11&0xf) != dns.OpcodeUpdate {
		t.Errorf("flags %#04x", flags)
	}
	if binary.BigEndian.Uint16(b[4:]) != 2 || binary.BigEndian.Uint16(b[10:]) != 3 {
		t.Errorf("counts % x", b[4:12])
	}
	SetQR(b, false)
	if binary.BigEndian.Uint16(b[2:])&FlagQR != 0 {
		t.Error("QR not cleared")
	}
	if got := WireName("BlocKed.example."); !bytes.Equal(got, []byte("\x07BlocKed\x07example\x00")) {
		t.Errorf("WireName % x", got)
	}
	if got := WireLabels("b001.blocked"); !bytes.Equal(got, []byte("\x04b001\x07blocked")) {
		t.Errorf("WireLabels % x", got)
	}
	if got := Pointer(0x1a); !bytes.Equal(got, []byte{0xc0, 0x1a}) {
		t.Errorf("Pointer % x", got)
	}
}

// A pointer question built from these pieces is what a lenient server
// resolves: miekg/dns follows it to the whole name.
func TestPointerQuestionUnpacks(t *testing.T) {
	t.Parallel()
	q := WireLabels("b001.blocked")
	hdr := make([]byte, DNSHeaderLen)
	hdr[5] = 1 // QDCOUNT 1
	b := append(hdr, q...)
	b = append(b, Pointer(DNSHeaderLen+len(q)+2+4)...)
	b = append(b, 0, 1, 0, 1)
	b = append(b, WireName("example")...)
	var m dns.Msg
	if err := m.Unpack(b); err != nil {
		t.Fatal(err)
	}
	if m.Question[0].Name != "b001.blocked.example." {
		t.Errorf("question %q", m.Question[0].Name)
	}
}
