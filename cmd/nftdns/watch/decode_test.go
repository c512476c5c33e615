package watch

import (
	"encoding/binary"
	"net/netip"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

var (
	cli4 = netip.MustParseAddrPort("198.18.1.2:40000")
	srv4 = netip.MustParseAddrPort("198.18.1.1:53")
	cli6 = netip.MustParseAddrPort("[2001:db8:1::2]:40001")
	srv6 = netip.MustParseAddrPort("[2001:db8:1::1]:53")
)

// dnsQuery packs a query; edns adds an OPT record.
func dnsQuery(t testing.TB, name string, typ uint16, edns bool) []byte {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, typ)
	if edns {
		m.SetEdns0(1232, true)
	}
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func udpSeg(src, dst uint16, payload []byte) []byte {
	b := make([]byte, 8, 8+len(payload))
	binary.BigEndian.PutUint16(b[0:], src)
	binary.BigEndian.PutUint16(b[2:], dst)
	binary.BigEndian.PutUint16(b[4:], uint16(8+len(payload)))
	return append(b, payload...)
}

// tcpSeg is a TCP segment with optLen bytes of (NOP) options.
func tcpSeg(src, dst uint16, optLen int, data []byte) []byte {
	b := make([]byte, 20+optLen, 20+optLen+len(data))
	binary.BigEndian.PutUint16(b[0:], src)
	binary.BigEndian.PutUint16(b[2:], dst)
	b[12] = byte((20+optLen)/4) << 4
	b[13] = 0x18 // PSH ACK
	for i := 20; i < 20+optLen; i++ {
		b[i] = 1
	}
	return append(b, data...)
}

func withLen(msgs ...[]byte) []byte {
	var b []byte
	for _, m := range msgs {
		b = binary.BigEndian.AppendUint16(b, uint16(len(m)))
		b = append(b, m...)
	}
	return b
}

func ip4(src, dst netip.Addr, proto byte, l4 []byte) []byte {
	b := make([]byte, 20, 20+len(l4))
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:], uint16(20+len(l4)))
	b[8], b[9] = 64, proto
	s, d := src.As4(), dst.As4()
	copy(b[12:], s[:])
	copy(b[16:], d[:])
	return append(b, l4...)
}

// ip6 builds an IPv6 packet; ext is a chain of extension headers whose
// next-header bytes the caller already set, first is the first one's type.
func ip6(src, dst netip.Addr, first byte, ext, l4 []byte) []byte {
	b := make([]byte, 40, 40+len(ext)+len(l4))
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[4:], uint16(len(ext)+len(l4)))
	b[6], b[7] = first, 64
	s, d := src.As16(), dst.As16()
	copy(b[8:], s[:])
	copy(b[24:], d[:])
	return append(append(b, ext...), l4...)
}

func TestDecode(t *testing.T) {
	t.Parallel()
	q := dnsQuery(t, "blocked.example.", dns.TypeA, false)
	qEDNS := dnsQuery(t, "MiXeD.Example.", dns.TypeAAAA, true)
	q2 := dnsQuery(t, "second.example.", dns.TypeMX, false)
	udp4 := ip4(cli4.Addr(), srv4.Addr(), protoUDP, udpSeg(cli4.Port(), srv4.Port(), q))
	hop := []byte{ext6Fragment, 0, 1, 4, 0, 0, 0, 0} // hop-by-hop: PadN, then a fragment header
	frag := func(off uint16) []byte {
		b := []byte{protoUDP, 0, 0, 0, 0, 0, 0, 1}
		binary.BigEndian.PutUint16(b[2:], off<<3|1)
		return b
	}
	nonFirst4 := append([]byte(nil), udp4...)
	binary.BigEndian.PutUint16(nonFirst4[6:], 3)
	noQuestion := append([]byte(nil), q[:12]...)
	noQuestion[5] = 0
	loop := append(append([]byte(nil), q[:12]...), 0xc0, 12, 0, 1, 0, 1) // pointer to itself
	cut := q[:len(q)-3]                                                  // question cut inside its type

	tests := []struct {
		name     string
		pkt      []byte
		want     Query
		errorHas string
	}{
		{name: "ipv4 udp", pkt: udp4,
			want: Query{Src: cli4, Dst: srv4, Proto: "udp", Name: "blocked.example.", Type: dns.TypeA}},
		{name: "ipv6 udp edns keeps case", pkt: ip6(cli6.Addr(), srv6.Addr(), protoUDP, nil, udpSeg(cli6.Port(), srv6.Port(), qEDNS)),
			want: Query{Src: cli6, Dst: srv6, Proto: "udp", Name: "MiXeD.Example.", Type: dns.TypeAAAA}},
		{name: "ipv4 tcp with options", pkt: ip4(cli4.Addr(), srv4.Addr(), protoTCP, tcpSeg(cli4.Port(), srv4.Port(), 12, withLen(q))),
			want: Query{Src: cli4, Dst: srv4, Proto: "tcp", Name: "blocked.example.", Type: dns.TypeA}},
		{name: "tcp two messages: the first", pkt: ip4(cli4.Addr(), srv4.Addr(), protoTCP, tcpSeg(cli4.Port(), srv4.Port(), 0, withLen(q, q2))),
			want: Query{Src: cli4, Dst: srv4, Proto: "tcp", Name: "blocked.example.", Type: dns.TypeA}},
		{name: "tcp message cut after its question", pkt: ip6(cli6.Addr(), srv6.Addr(), protoTCP, nil,
			tcpSeg(cli6.Port(), srv6.Port(), 0, append(binary.BigEndian.AppendUint16(nil, 500), qEDNS[:len(qEDNS)-5]...))),
			want: Query{Src: cli6, Dst: srv6, Proto: "tcp", Name: "MiXeD.Example.", Type: dns.TypeAAAA}},
		{name: "ipv6 hop-by-hop and first fragment", pkt: ip6(cli6.Addr(), srv6.Addr(), ext6HopByHop, append(append([]byte(nil), hop...), frag(0)...), udpSeg(cli6.Port(), srv6.Port(), q)),
			want: Query{Src: cli6, Dst: srv6, Proto: "udp", Name: "blocked.example.", Type: dns.TypeA}},
		{name: "ipv4 trailing bytes past total length ignored", pkt: append(append([]byte(nil), udp4...), 0xff, 0xff),
			want: Query{Src: cli4, Dst: srv4, Proto: "udp", Name: "blocked.example.", Type: dns.TypeA}},

		{name: "empty", pkt: nil, errorHas: "empty"},
		{name: "ip version 5", pkt: []byte{0x50, 0, 0, 0}, errorHas: "ip version 5"},
		{name: "ipv4 short", pkt: udp4[:19], errorHas: "ipv4"},
		{name: "ipv4 total length past capture", pkt: udp4[:len(udp4)-1], errorHas: "total length"},
		{name: "ipv4 non-first fragment", pkt: nonFirst4, errorHas: "fragment"},
		{name: "ipv6 non-first fragment", pkt: ip6(cli6.Addr(), srv6.Addr(), ext6Fragment, frag(10), udpSeg(1, 53, q)), errorHas: "fragment"},
		{name: "ipv6 short", pkt: append([]byte{0x60}, make([]byte, 38)...), errorHas: "ipv6"},
		{name: "icmp", pkt: ip4(cli4.Addr(), srv4.Addr(), 1, make([]byte, 8)), errorHas: "neither udp nor tcp"},
		{name: "udp short", pkt: ip4(cli4.Addr(), srv4.Addr(), protoUDP, make([]byte, 7)), errorHas: "udp"},
		{name: "udp length too big", pkt: func() []byte {
			s := udpSeg(1, 53, q)
			binary.BigEndian.PutUint16(s[4:], 5000)
			return ip4(cli4.Addr(), srv4.Addr(), protoUDP, s)
		}(), errorHas: "udp: length"},
		{name: "tcp data offset past segment", pkt: func() []byte {
			s := tcpSeg(1, 53, 0, nil)
			s[12] = 0xf0
			return ip4(cli4.Addr(), srv4.Addr(), protoTCP, s)
		}(), errorHas: "data offset"},
		{name: "tcp without length prefix", pkt: ip4(cli4.Addr(), srv4.Addr(), protoTCP, tcpSeg(1, 53, 0, []byte{0})), errorHas: "length prefix"},
		{name: "dns short", pkt: ip4(cli4.Addr(), srv4.Addr(), protoUDP, udpSeg(1, 53, q[:11])), errorHas: "dns"},
		{name: "dns no question", pkt: ip4(cli4.Addr(), srv4.Addr(), protoUDP, udpSeg(1, 53, noQuestion)), errorHas: "no question"},
		{name: "dns pointer loop", pkt: ip4(cli4.Addr(), srv4.Addr(), protoUDP, udpSeg(1, 53, loop)), errorHas: "dns"},
		{name: "dns question cut", pkt: ip4(cli4.Addr(), srv4.Addr(), protoUDP, udpSeg(1, 53, cut)), errorHas: "cut short"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := Decode(tc.pkt)
			if tc.errorHas != "" {
				if err == nil || !strings.Contains(err.Error(), tc.errorHas) {
					t.Fatalf("Decode: error %v, want one containing %q (got %+v)", err, tc.errorHas, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if got != tc.want {
				t.Errorf("Decode = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestTypeString(t *testing.T) {
	t.Parallel()
	for typ, want := range map[uint16]string{dns.TypeA: "A", dns.TypeHTTPS: "HTTPS", 65534: "TYPE65534"} {
		if got := (Query{Type: typ}).TypeString(); got != want {
			t.Errorf("TypeString(%d) = %q, want %q", typ, got, want)
		}
	}
}

// FuzzDecode: Decode never panics, and what it accepts is a well-formed
// query description.
func FuzzDecode(f *testing.F) {
	q := dnsQuery(f, "blocked.example.", dns.TypeA, true)
	f.Add(ip4(cli4.Addr(), srv4.Addr(), protoUDP, udpSeg(cli4.Port(), 53, q)))
	f.Add(ip4(cli4.Addr(), srv4.Addr(), protoTCP, tcpSeg(cli4.Port(), 53, 4, withLen(q))))
	f.Add(ip6(cli6.Addr(), srv6.Addr(), protoUDP, nil, udpSeg(cli6.Port(), 53, q)))
	f.Add(ip6(cli6.Addr(), srv6.Addr(), ext6DestOpts, []byte{protoTCP, 0, 1, 4, 0, 0, 0, 0}, tcpSeg(1, 53, 0, withLen(q))))
	f.Add([]byte{0x45})
	f.Fuzz(func(t *testing.T, pkt []byte) {
		got, err := Decode(pkt)
		if err != nil {
			return
		}
		if !got.Src.IsValid() || !got.Dst.IsValid() || got.Src.Addr().Is4() != got.Dst.Addr().Is4() {
			t.Fatalf("accepted with addresses %v -> %v", got.Src, got.Dst)
		}
		if got.Proto != "udp" && got.Proto != "tcp" {
			t.Fatalf("accepted with protocol %q", got.Proto)
		}
		if !strings.HasSuffix(got.Name, ".") {
			t.Fatalf("accepted name %q is not fully qualified", got.Name)
		}
		_ = got.TypeString()
	})
}
