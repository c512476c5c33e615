package rules

import (
	"bytes"
	crand "crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// --- an interpreter for the raw table, as the kernel evaluates it ---

// xtSim runs packets through the *raw table of a rendered ruleset: the
// built-in PREROUTING chain, jumps, gotos and returns, and the matches the
// renderer writes (-p/--dport, -s/-d, u32 with xt_u32.c's algorithm, string
// with skb_find_text's window rule). Like sim_test.go for the nftables
// table, it lets tests push thousands of queries through the ruleset
// without root; the namespace test checks the kernel agrees.
type xtSim struct {
	fam    Family
	chains map[string][]xtRule
	// oldString uses the string match's window rule before Linux 6.7 (a
	// match only has to start by --to).
	oldString bool
}

type xtRule struct {
	line     string
	proto    string
	dport    int
	src, dst netip.Prefix
	u32      []xtU32
	strs     []xtString
	target   string
	isGoto   bool
}

type xtU32 struct {
	invert bool
	tests  []xtU32Test
}

type xtU32Test struct {
	nums   []uint32
	ops    []byte // ops[i] applies nums[i+1]: '&', '<', '>', '@'
	ranges [][2]uint32
}

type xtString struct {
	pattern  []byte
	from, to int
	icase    bool
}

// xtTokens splits a rule line at spaces, keeping "quoted strings" whole.
func xtTokens(line string) []string {
	var out []string
	for line != "" {
		line = strings.TrimLeft(line, " ")
		if line == "" {
			break
		}
		if line[0] == '"' {
			end := strings.IndexByte(line[1:], '"')
			out = append(out, line[1:1+end])
			line = line[end+2:]
			continue
		}
		tok, rest, _ := strings.Cut(line, " ")
		out = append(out, tok)
		line = rest
	}
	return out
}

func newXTSim(t testing.TB, fam Family, ruleset string) *xtSim {
	t.Helper()
	s := &xtSim{fam: fam, chains: map[string][]xtRule{}}
	inRaw := false
	for _, line := range strings.Split(ruleset, "\n") {
		switch {
		case line == "*raw":
			inRaw = true
		case line == "COMMIT":
			inRaw = false
		case !inRaw || line == "" || line[0] == '#':
		case line[0] == ':':
			s.chains[strings.Fields(line[1:])[0]] = nil
		case strings.HasPrefix(line, "-A "):
			chain, r := parseXTRule(t, line)
			s.chains[chain] = append(s.chains[chain], r)
		default:
			t.Fatalf("raw table: unexpected line %q", line)
		}
	}
	return s
}

func parseXTRule(t testing.TB, line string) (string, xtRule) {
	t.Helper()
	tok := xtTokens(line)
	r := xtRule{line: line}
	chain := tok[1]
	invert := false
	for i := 2; i < len(tok); i++ {
		arg := func() string {
			i++
			if i >= len(tok) {
				t.Fatalf("%q: %s needs an argument", line, tok[i-1])
			}
			return tok[i]
		}
		switch tok[i] {
		case "!":
			invert = true
			continue
		case "-p":
			r.proto = arg()
		case "-m":
			arg() // the module; its options follow
		case "--dport":
			r.dport, _ = strconv.Atoi(arg())
		case "-s", "-d":
			p, err := netip.ParsePrefix(arg())
			if err != nil {
				t.Fatalf("%q: %v", line, err)
			}
			if tok[i-1] == "-s" {
				r.src = p
			} else {
				r.dst = p
			}
		case "--comment", "--limit", "--limit-burst", "--log-prefix":
			arg()
		case "--u32":
			r.u32 = append(r.u32, xtParseU32(t, arg(), invert))
		case "--hex-string":
			r.strs = append(r.strs, xtString{pattern: xtDecodeHexString(t, arg()), from: -1})
		case "--algo":
			if a := arg(); a != "bm" {
				t.Fatalf("%q: algo %s", line, a)
			}
		case "--from", "--to":
			n, _ := strconv.Atoi(arg())
			st := &r.strs[len(r.strs)-1]
			if tok[i-1] == "--from" {
				st.from = n
			} else {
				st.to = n
			}
		case "--icase":
			r.strs[len(r.strs)-1].icase = true
		case "-j", "-g":
			r.isGoto = tok[i] == "-g"
			r.target = arg()
		default:
			t.Fatalf("%q: the interpreter does not know %q", line, tok[i])
		}
		invert = false
	}
	return chain, r
}

func xtParseU32(t testing.TB, expr string, invert bool) xtU32 {
	t.Helper()
	m := xtU32{invert: invert}
	num := func(s string) uint32 {
		n, err := strconv.ParseUint(s, 0, 32)
		if err != nil {
			t.Fatalf("u32 %q: number %q: %v", expr, s, err)
		}
		return uint32(n)
	}
	for _, test := range strings.Split(expr, "&&") {
		loc, vals, ok := strings.Cut(test, "=")
		if !ok {
			t.Fatalf("u32 %q: no '='", expr)
		}
		var ut xtU32Test
		// location := number (op number)*, ops "&", "<<", ">>", "@"
		re := regexp.MustCompile(`^(0x[0-9A-Fa-f]+|\d+)|(&|<<|>>|@)(0x[0-9A-Fa-f]+|\d+)`)
		rest := loc
		first := true
		for rest != "" {
			sm := re.FindStringSubmatch(rest)
			if sm == nil {
				t.Fatalf("u32 %q: bad location at %q", expr, rest)
			}
			if first {
				if sm[1] == "" {
					t.Fatalf("u32 %q: location starts with an operator", expr)
				}
				ut.nums = append(ut.nums, num(sm[1]))
				first = false
			} else {
				if sm[2] == "" {
					t.Fatalf("u32 %q: two numbers in a row at %q", expr, rest)
				}
				ut.ops = append(ut.ops, sm[2][0])
				ut.nums = append(ut.nums, num(sm[3]))
			}
			rest = rest[len(sm[0]):]
		}
		if len(ut.nums) > xtU32Tests {
			t.Fatalf("u32 %q: %d numbers in a location (iptables takes %d)", expr, len(ut.nums), xtU32Tests)
		}
		for _, v := range strings.Split(vals, ",") {
			lo, hi, isRange := strings.Cut(v, ":")
			if !isRange {
				hi = lo
			}
			ut.ranges = append(ut.ranges, [2]uint32{num(lo), num(hi)})
		}
		m.tests = append(m.tests, ut)
	}
	if len(m.tests) > xtU32Tests {
		t.Fatalf("u32 %q: %d tests (iptables takes %d)", expr, len(m.tests), xtU32Tests)
	}
	return m
}

// match is u32_match_it from net/netfilter/xt_u32.c.
func (m xtU32) match(pkt []byte) bool {
	word := func(pos uint64) (uint32, bool) {
		if pos+4 > uint64(len(pkt)) {
			return 0, false
		}
		return binary.BigEndian.Uint32(pkt[pos:]), true
	}
	ok := func() bool {
		for _, ct := range m.tests {
			var at uint64
			val, good := word(uint64(ct.nums[0]))
			if !good {
				return false
			}
			for i, op := range ct.ops {
				n := ct.nums[i+1]
				switch op {
				case '&':
					val &= n
				case '<':
					val <<= n
				case '>':
					val >>= n
				case '@':
					at += uint64(val)
					if val, good = word(at + uint64(n)); !good {
						return false
					}
				}
			}
			in := false
			for _, r := range ct.ranges {
				in = in || r[0] <= val && val <= r[1]
			}
			if !in {
				return false
			}
		}
		return true
	}()
	return ok != m.invert
}

// match is xt_string with the bm algorithm: the leftmost occurrence at or
// after --from, accepted if it ends by --to (since 6.7) or starts by --to
// (before). --icase compares through toupper(); for the ASCII patterns
// rendered here the kernel's Latin-1 folding makes no difference.
func (st xtString) match(pkt []byte, old bool) bool {
	if st.from >= len(pkt) {
		return false
	}
	text, pat := pkt[st.from:], st.pattern
	if st.icase {
		text, pat = bytes.ToUpper(text), bytes.ToUpper(pat)
	}
	i := bytes.Index(text, pat)
	if i < 0 {
		return false
	}
	if old {
		return i <= st.to-st.from
	}
	return i+len(pat) <= st.to-st.from
}

// transport returns the L4 protocol and offset, skipping IPv6 extension
// headers as ip6tables' -p does.
func (s *xtSim) transport(pkt []byte) (proto byte, off int) {
	if s.fam == IPv4 {
		return pkt[9], int(pkt[0]&0xf) * 4
	}
	nh, off := pkt[6], 40
	for nh == 0 || nh == 43 || nh == 60 || nh == 44 {
		if nh == 44 {
			nh, off = pkt[off], off+8
			continue
		}
		nh, off = pkt[off], off+(int(pkt[off+1])+1)*8
	}
	return nh, off
}

func (s *xtSim) matches(r xtRule, pkt []byte) bool {
	proto, off := s.transport(pkt)
	if r.proto != "" && proto != map[string]byte{"udp": 17, "tcp": 6}[r.proto] {
		return false
	}
	if r.dport != 0 && int(binary.BigEndian.Uint16(pkt[off+2:])) != r.dport {
		return false
	}
	srcOff, n := 12, 4
	if s.fam == IPv6 {
		srcOff, n = 8, 16
	}
	src, _ := netip.AddrFromSlice(pkt[srcOff : srcOff+n])
	dst, _ := netip.AddrFromSlice(pkt[srcOff+n : srcOff+2*n])
	if r.src.IsValid() && !r.src.Contains(src) || r.dst.IsValid() && !r.dst.Contains(dst) {
		return false
	}
	for _, m := range r.u32 {
		if !m.match(pkt) {
			return false
		}
	}
	for _, st := range r.strs {
		if !st.match(pkt, s.oldString) {
			return false
		}
	}
	return true
}

// outcomes of a packet through the raw table
const (
	xtPass      = "pass"
	xtBlocked   = "blocked"
	xtMalformed = "malformed"
	xtOutsider  = "outsider"
)

func xtDropOutcome(chain string) string {
	switch {
	case chain == xtPrefix+"BLOCK":
		return xtBlocked
	case strings.HasPrefix(chain, xtPrefix+"QUERY-"):
		return xtMalformed
	case strings.HasPrefix(chain, xtPrefix+"DNS-"):
		return xtOutsider
	}
	return "drop in " + chain
}

// run evaluates raw PREROUTING (policy ACCEPT) for an IP packet.
func (s *xtSim) run(pkt []byte) string {
	type frame struct {
		chain string
		i     int
	}
	stack := []frame{{"PREROUTING", 0}}
	for steps := 0; len(stack) > 0; steps++ {
		if steps > 100000 {
			return "loop"
		}
		top := &stack[len(stack)-1]
		rules := s.chains[top.chain]
		if top.i >= len(rules) {
			stack = stack[:len(stack)-1]
			continue
		}
		r := rules[top.i]
		top.i++
		if !s.matches(r, pkt) {
			continue
		}
		switch r.target {
		case "DROP":
			return xtDropOutcome(top.chain)
		case "ACCEPT":
			return xtPass
		case "RETURN":
			stack = stack[:len(stack)-1]
		case "LOG":
		default:
			if _, ok := s.chains[r.target]; !ok {
				return "no chain " + r.target
			}
			if r.isGoto {
				*top = frame{r.target, 0}
			} else {
				stack = append(stack, frame{r.target, 0})
			}
		}
	}
	return xtPass
}

// --- packets ---

// xtPacket describes a test packet; bytes() builds it with correct
// checksums so the kernel's conntrack accepts it too.
type xtPacket struct {
	fam      Family
	tcp      bool
	src, dst netip.Addr
	sport    uint16
	dport    uint16 // 53 when zero
	ipOpts   int    // IPv4 option bytes (NOPs), a multiple of 4
	hopByHop bool   // an IPv6 hop-by-hop header before the transport
	fragment bool   // IPv4 MF set
	tcpOpts  int    // TCP option bytes, a multiple of 4
	tcpFlags byte   // PSH|ACK when zero
	payload  []byte // UDP payload / TCP segment data
}

func (p xtPacket) bytes() []byte {
	proto := byte(17)
	if p.tcp {
		proto = 6
	}
	dport := p.dport
	if dport == 0 {
		dport = DNSPort
	}
	var l4 []byte
	if p.tcp {
		hl := 20 + p.tcpOpts
		l4 = make([]byte, hl)
		binary.BigEndian.PutUint16(l4[0:], p.sport)
		binary.BigEndian.PutUint16(l4[2:], dport)
		binary.BigEndian.PutUint32(l4[4:], 1000)
		binary.BigEndian.PutUint32(l4[8:], 2000)
		l4[12] = byte(hl/4) << 4
		l4[13] = p.tcpFlags
		if l4[13] == 0 {
			l4[13] = 0x18
		}
		binary.BigEndian.PutUint16(l4[14:], 65535)
		for i := 20; i < hl; i++ {
			l4[i] = 1 // NOP
		}
		if p.tcpOpts >= 12 { // timestamps, as Linux sends them
			copy(l4[20:], []byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2})
		}
		l4 = append(l4, p.payload...)
	} else {
		l4 = make([]byte, 8)
		binary.BigEndian.PutUint16(l4[0:], p.sport)
		binary.BigEndian.PutUint16(l4[2:], dport)
		binary.BigEndian.PutUint16(l4[4:], uint16(8+len(p.payload)))
		l4 = append(l4, p.payload...)
	}
	// transport checksum over the pseudo-header
	var pseudo []byte
	pseudo = append(pseudo, p.src.AsSlice()...)
	pseudo = append(pseudo, p.dst.AsSlice()...)
	if p.fam == IPv4 {
		pseudo = append(pseudo, 0, proto)
		pseudo = binary.BigEndian.AppendUint16(pseudo, uint16(len(l4)))
	} else {
		pseudo = binary.BigEndian.AppendUint32(pseudo, uint32(len(l4)))
		pseudo = append(pseudo, 0, 0, 0, proto)
	}
	csumOff := 6
	if p.tcp {
		csumOff = 16
	}
	c := xtChecksum(append(pseudo, l4...))
	if c == 0 && !p.tcp {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(l4[csumOff:], c)

	if p.fam == IPv4 {
		hl := 20 + p.ipOpts
		ip := make([]byte, hl)
		ip[0] = 0x40 | byte(hl/4)
		binary.BigEndian.PutUint16(ip[2:], uint16(hl+len(l4)))
		binary.BigEndian.PutUint16(ip[4:], p.sport)
		if p.fragment {
			ip[6] = 0x20
		}
		ip[8], ip[9] = 64, proto
		copy(ip[12:], p.src.AsSlice())
		copy(ip[16:], p.dst.AsSlice())
		for i := 20; i < hl; i++ {
			ip[i] = 1
		}
		binary.BigEndian.PutUint16(ip[10:], xtChecksum(ip))
		return append(ip, l4...)
	}
	var ext []byte
	nh := proto
	if p.hopByHop {
		ext = []byte{proto, 0, 1, 4, 0, 0, 0, 0} // PadN
		nh = 0
	}
	ip := make([]byte, 40)
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:], uint16(len(ext)+len(l4)))
	ip[6], ip[7] = nh, 64
	copy(ip[8:], p.src.AsSlice())
	copy(ip[24:], p.dst.AsSlice())
	return append(append(ip, ext...), l4...)
}

func xtChecksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// xtAddrs are the addresses of testSettings per family.
type xtAddrs struct{ client, outsider, listen, other netip.Addr }

func xtAddrsFor(f Family) xtAddrs {
	if f == IPv4 {
		return xtAddrs{netip.MustParseAddr("198.18.1.10"), netip.MustParseAddr("203.0.113.7"),
			netip.MustParseAddr("198.18.1.1"), netip.MustParseAddr("192.0.2.53")}
	}
	return xtAddrs{netip.MustParseAddr("2001:db8:1::10"), netip.MustParseAddr("2001:db8:99::7"),
		netip.MustParseAddr("2001:db8:1::1"), netip.MustParseAddr("2001:db8:77::53")}
}

// query is a DNS query message for the wire name (QTYPE A, RD set).
func xtQuery(wire []byte) []byte { return dnsQuery(wire) }

func xtWithLen(msg []byte) []byte {
	return append(binary.BigEndian.AppendUint16(nil, uint16(len(msg))), msg...)
}

// xtCase is one packet and what the raw table must do with it.
type xtCase struct {
	name string
	pkt  xtPacket
	want string
	// simOnly: the kernel cannot see this packet in raw PREROUTING as built
	// (an unreassembled fragment is held by defragmentation).
	simOnly bool
}

func xtMixedCase(w []byte) []byte {
	out := bytes.Clone(w)
	for i, b := range out {
		if b >= 'a' && b <= 'z' && i%2 == 0 {
			out[i] = b - 0x20
		}
	}
	return out
}

var (
	xtLong140 = longName(140, 41)
	xtLong255 = longName(255, 42)
	xtListed  = []string{"blocked.example", "ads.example", "x", "a.b", "x-abcdefghijklm.com",
		"_srv._tcp.example", "0day.example", xtLong140, xtLong255}
)

// xtCases are the behaviour cases for one family, checked by the
// interpreter and, as root, by the kernel.
func xtCases(f Family) []xtCase {
	a := xtAddrsFor(f)
	var cs []xtCase
	port := uint16(20000)
	add := func(name string, p xtPacket, want string) {
		port++
		p.fam, p.sport = f, port
		if !p.src.IsValid() {
			p.src = a.client
		}
		if !p.dst.IsValid() {
			p.dst = a.listen
		}
		cs = append(cs, xtCase{name: name, pkt: p, want: want})
	}
	udpQ := func(w []byte) xtPacket { return xtPacket{payload: xtQuery(w)} }
	tcpQ := func(w []byte, opts int) xtPacket {
		return xtPacket{tcp: true, tcpOpts: opts, payload: xtWithLen(xtQuery(w))}
	}
	for _, n := range xtListed {
		add("udp listed "+n[:min(len(n), 20)], udpQ(Wire(n)), xtBlocked)
		add("udp listed mixed case "+n[:min(len(n), 20)], udpQ(xtMixedCase(Wire(n))), xtBlocked)
		add("tcp listed "+n[:min(len(n), 20)], tcpQ(Wire(n), 0), xtBlocked)
		add("tcp timestamps mixed case "+n[:min(len(n), 20)], tcpQ(xtMixedCase(Wire(n)), 12), xtBlocked)
	}
	add("udp upper case", udpQ(Wire("BLOCKED.EXAMPLE")), xtBlocked)
	add("tcp 40 option bytes", tcpQ(Wire("BLOCKED.example"), 40), xtBlocked)
	add("udp to another address from a client", xtPacket{dst: a.other, payload: xtQuery(Wire("ads.example"))}, xtBlocked)
	near := []string{"sub.blocked.example", "blocked.example.com", "xblocked.example", "blocked.exampl",
		"blocked.exampla", "example", "a.bc", "xa.b", "a", "y", "x.x", "ads.example.com", "x.abcdefghijklm.com",
		"x-abcdefghijklm.co", "srv._tcp.example", "1day.example",
		xtLong140[:len(xtLong140)-1] + "q", "q" + xtLong140[1:], xtLong255[:len(xtLong255)-1] + "q",
		xtLong140[:126] + "q" + xtLong140[127:], xtLong140[:128] + "q" + xtLong140[129:]}
	for _, n := range near {
		if _, err := NormalizeName(n); err != nil {
			panic(n)
		}
		add("udp near miss "+n[:min(len(n), 24)], udpQ(Wire(n)), xtPass)
		add("tcp near miss "+n[:min(len(n), 24)], tcpQ(Wire(n), 12), xtPass)
	}
	// a listed name with a hyphen, and the name with a length byte of 13 in
	// its place (what OR-0x20 folding cannot tell apart)
	add("udp hyphen twin", udpQ([]byte("\x01x\x0dabcdefghijklm\x03com\x00")), xtPass)
	add("udp root", udpQ([]byte{0}), xtPass)

	mod := func(w []byte, fn func(m []byte)) []byte { m := xtQuery(w); fn(m); return m }
	bl := Wire("blocked.example")
	add("udp QR set", xtPacket{payload: mod(bl, func(m []byte) { m[2] |= 0x80 })}, xtMalformed)
	add("udp opcode 4", xtPacket{payload: mod(bl, func(m []byte) { m[2] |= 4 << 3 })}, xtMalformed)
	add("udp qdcount 2", xtPacket{payload: mod(bl, func(m []byte) { m[5] = 2 })}, xtMalformed)
	add("udp RD, AD and CD set", xtPacket{payload: mod(bl, func(m []byte) { m[2] |= 1; m[3] |= 0x30 })}, xtBlocked)
	add("udp 4-byte message", xtPacket{payload: xtQuery(bl)[:4]}, xtMalformed)
	add("tcp QR set", xtPacket{tcp: true, payload: xtWithLen(mod(bl, func(m []byte) { m[2] |= 0x80 }))}, xtMalformed)
	add("tcp handshake", xtPacket{tcp: true, tcpFlags: 0x02, tcpOpts: 20}, xtPass)
	add("tcp bare ACK", xtPacket{tcp: true, tcpFlags: 0x10, tcpOpts: 12}, xtPass)
	add("tcp length prefix alone", xtPacket{tcp: true, payload: []byte{0, 33}}, xtMalformed)
	if f == IPv4 {
		add("udp IP options", xtPacket{ipOpts: 4, payload: xtQuery(Wire("allowed.example"))}, xtMalformed)
		add("tcp IP options", xtPacket{tcp: true, ipOpts: 8, payload: xtWithLen(xtQuery(bl))}, xtMalformed)
		add("udp fragment", xtPacket{fragment: true, payload: xtQuery(bl)}, xtMalformed)
		cs[len(cs)-1].simOnly = true
	} else {
		add("udp hop-by-hop header", xtPacket{hopByHop: true, payload: xtQuery(Wire("allowed.example"))}, xtMalformed)
		add("tcp hop-by-hop header", xtPacket{tcp: true, hopByHop: true, payload: xtWithLen(xtQuery(bl))}, xtMalformed)
	}
	add("udp outsider to listen", xtPacket{src: a.outsider, payload: xtQuery(Wire("allowed.example"))}, xtOutsider)
	add("tcp outsider to listen", xtPacket{tcp: true, src: a.outsider, tcpFlags: 0x02}, xtOutsider)
	add("udp outsider elsewhere", xtPacket{src: a.outsider, dst: a.other, payload: xtQuery(bl)}, xtPass)
	add("udp other port", xtPacket{dport: 5353, payload: xtQuery(bl)}, xtPass)
	return cs
}

func xtRenderBoth(t testing.TB, s Settings, lists ...*List) map[Family]string {
	t.Helper()
	v4, err := RenderIptables(s, lists)
	if err != nil {
		t.Fatal(err)
	}
	v6, err := RenderIp6tables(s, lists)
	if err != nil {
		t.Fatal(err)
	}
	return map[Family]string{IPv4: v4, IPv6: v6}
}

func TestIptablesBehaviour(t *testing.T) {
	t.Parallel()
	out := xtRenderBoth(t, testSettings(), listOf(t, xtListed...))
	for _, f := range []Family{IPv4, IPv6} {
		for _, old := range []bool{false, true} {
			s := newXTSim(t, f, out[f])
			s.oldString = old
			for _, c := range xtCases(f) {
				if got := s.run(c.pkt.bytes()); got != c.want {
					t.Errorf("IPv%d (pre-6.7 string: %v) %s: %s, want %s", f, old, c.name, got, c.want)
				}
			}
		}
	}
}

// TestIptablesExactAndCaseInsensitive pushes every listed name in random
// case, and every name one edit away, through the interpreter.
func TestIptablesExactAndCaseInsensitive(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewPCG(3, 4))
	var listed []string
	for len(listed) < 300 {
		n := longName(3+r.IntN(100), r.Uint64())
		if norm, err := NormalizeName(n); err == nil && norm == n {
			listed = append(listed, n)
		}
	}
	listed = append(listed, xtListed...)
	isListed := map[string]bool{}
	for _, n := range listed {
		isListed[n] = true
	}
	out := xtRenderBoth(t, testSettings(), listOf(t, listed...))
	for _, f := range []Family{IPv4, IPv6} {
		s := newXTSim(t, f, out[f])
		a := xtAddrsFor(f)
		check := func(w []byte, want string) {
			t.Helper()
			for _, p := range []xtPacket{
				{fam: f, src: a.client, dst: a.listen, payload: xtQuery(w)},
				{fam: f, tcp: true, tcpOpts: 4 * r.IntN(11), src: a.client, dst: a.listen, payload: xtWithLen(xtQuery(w))},
			} {
				if got := s.run(p.bytes()); got != want {
					t.Errorf("IPv%d tcp=%v %q: %s, want %s", f, p.tcp, w, got, want)
				}
			}
		}
		letters := "abcdefghijklmnopqrstuvwxyz0123456789-_"
		for _, n := range listed {
			check(randomCase(r, Wire(n)), xtBlocked)
			// one character changed, dropped or added
			i := r.IntN(len(n))
			for _, m := range []string{n[:i] + string(letters[r.IntN(len(letters))]) + n[i+1:], n[:i] + n[i+1:], n + "a", "a" + n, "a." + n, n + ".a"} {
				if norm, err := NormalizeName(m); err != nil || norm != m || isListed[m] {
					continue
				}
				check(Wire(m), xtPass)
			}
		}
	}
}

// TestIptablesFoldTwins: names whose OR-0x20 fold collides with another
// name (compile_test.go) are told apart, since only letters are masked.
func TestIptablesFoldTwins(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewPCG(21, 22))
	listed, twins := foldTwinPairs(r, 40)
	isListed := map[string]bool{}
	for _, n := range listed {
		isListed[string(Wire(n))] = true
	}
	out := xtRenderBoth(t, testSettings(), listOf(t, listed...))
	for _, f := range []Family{IPv4, IPv6} {
		s := newXTSim(t, f, out[f])
		a := xtAddrsFor(f)
		for i, n := range listed {
			for _, w := range [][]byte{randomCase(r, Wire(n)), twins[i]} {
				want := xtBlocked
				if !isListed[string(bytes.ToLower(w))] {
					want = xtPass
				}
				for _, tcp := range []bool{false, true} {
					p := xtPacket{fam: f, tcp: tcp, src: a.client, dst: a.listen, payload: xtQuery(w)}
					if tcp {
						p.payload = xtWithLen(p.payload)
					}
					if got := s.run(p.bytes()); got != want {
						t.Errorf("IPv%d tcp=%v %q (listed %q): %s, want %s", f, tcp, w, n, got, want)
					}
				}
			}
		}
	}
}

// xtDecodeHexString is iptables' --hex-string syntax: |hex| runs (spaces
// allowed) between literal characters.
func xtDecodeHexString(t testing.TB, s string) []byte {
	t.Helper()
	var out []byte
	for i := 0; i < len(s); i++ {
		if s[i] != '|' {
			out = append(out, s[i])
			continue
		}
		end := strings.IndexByte(s[i+1:], '|')
		if end < 0 {
			t.Fatalf("hex string %q: unterminated |", s)
		}
		b, err := hex.DecodeString(strings.ReplaceAll(s[i+1:i+1+end], " ", ""))
		if err != nil {
			t.Fatalf("hex string %q: %v", s, err)
		}
		out = append(out, b...)
		i += end + 1
	}
	return out
}

// TestIptablesHexStringsAreWireNames: each UDP name rule's string matches,
// joined, spell one listed name in wire format, pinned to the name's offset
// with a window of exactly their length; every name has exactly one rule.
func TestIptablesHexStringsAreWireNames(t *testing.T) {
	t.Parallel()
	out := xtRenderBoth(t, testSettings(), listOf(t, xtListed...))
	for f, base := range map[Family]int{IPv4: 40, IPv6: 60} {
		seen := map[string]int{}
		for _, line := range strings.Split(out[f], "\n") {
			if !strings.Contains(line, "--hex-string") {
				continue
			}
			_, r := parseXTRule(t, line)
			var wire []byte
			for _, st := range r.strs {
				if st.from != base+len(wire) || st.to-st.from != len(st.pattern) || len(st.pattern) > xtStringMax || !st.icase {
					t.Errorf("IPv%d %q: window [%d,%d) for %d bytes at name offset %d", f, line, st.from, st.to, len(st.pattern), len(wire))
				}
				wire = append(wire, st.pattern...)
			}
			seen[string(wire)]++
		}
		for _, n := range xtListed {
			if seen[string(Wire(n))] != 1 {
				t.Errorf("IPv%d: %d rules for %s", f, seen[string(Wire(n))], n)
			}
			delete(seen, string(Wire(n)))
		}
		for w := range seen {
			t.Errorf("IPv%d: hex string %q is no listed name", f, w)
		}
	}
}

func TestIptablesDeterministicAndGolden(t *testing.T) {
	t.Parallel()
	lists := func() []*List {
		return []*List{
			listOf(t, "blocked.example", "0.0.0.0 ads.example tracker.example", "x", "a.b", "x-abcdefghijklm.com", longName(140, 5)),
			listOf(t, "_srv._tcp.example", "0day.example", "blocked.example"),
		}
	}
	a := xtRenderBoth(t, testSettings(), lists()...)
	for range 5 {
		b := xtRenderBoth(t, testSettings(), lists()...)
		if a[IPv4] != b[IPv4] || a[IPv6] != b[IPv6] {
			t.Fatal("RenderIptables is not deterministic")
		}
	}
	for f, file := range map[Family]string{IPv4: "iptables.golden", IPv6: "iptables-ipv6.golden"} {
		checkGolden(t, file, a[f])
	}
}

func TestIptablesErrors(t *testing.T) {
	t.Parallel()
	mod := func(f func(*Settings)) Settings { s := testSettings(); f(&s); return s }
	bad := &List{Path: "x", Names: map[string]int{"evil\" -j ACCEPT": 1}}
	tests := []struct {
		name  string
		s     Settings
		lists []*List
		want  string
	}{
		{"settings", mod(func(s *Settings) { s.Listen = nil }), nil, "no listen address"},
		{"rate", mod(func(s *Settings) { s.LogRate = Rate{N: 10001, Unit: PerSecond} }), nil, "at most 10000/second"},
		{"burst", mod(func(s *Settings) { s.LogBurst = 10001 }), nil, "at most 10000"},
		{"name", testSettings(), []*List{bad}, "not a normalised name"},
	}
	for _, tt := range tests {
		for _, render := range []func(Settings, []*List) (string, error){RenderIptables, RenderIp6tables} {
			_, err := render(tt.s, tt.lists)
			if err == nil || !strings.Contains(err.Error(), tt.want) || !IsInputError(err) {
				t.Errorf("%s: err = %v, want input error containing %q", tt.name, err, tt.want)
			}
		}
	}
	ok := mod(func(s *Settings) { s.LogRate = Rate{N: 600000, Unit: PerMinute}; s.LogBurst = 10000 })
	if _, err := RenderIptables(ok, nil); err != nil {
		t.Errorf("10000/second as 600000/minute, burst 10000: %v", err)
	}
}

func TestIptablesFamilies(t *testing.T) {
	t.Parallel()
	// IPv4 only: the IPv6 file has the raw checks' frame but no NAT and no
	// client rules.
	s := Settings{
		Listen:    []netip.Addr{netip.MustParseAddr("::ffff:198.18.1.1")},
		Upstreams: []netip.AddrPort{netip.MustParseAddrPort("198.18.2.11:53")},
		Clients:   []netip.Prefix{netip.MustParsePrefix("198.18.1.0/24")},
	}
	out := xtRenderBoth(t, s)
	if !strings.Contains(out[IPv4], "-A NFTDNS-NAT -d 198.18.1.1/32 -g NFTDNS-NAT-CLIENTS") ||
		!strings.Contains(out[IPv4], "--every 1 --packet 0") {
		t.Errorf("IPv4 output lacks the NAT rules:\n%s", out[IPv4])
	}
	if strings.Contains(out[IPv6], "*nat") || strings.Contains(out[IPv6], "198.18") || strings.Contains(out[IPv6], " -s ") {
		t.Errorf("IPv6 output has IPv4 or NAT rules:\n%s", out[IPv6])
	}
	if n := strings.Count(out[IPv4], "\nCOMMIT\n"); n != 3 {
		t.Errorf("IPv4: %d tables, want 3", n)
	}
}

// --- the kernel: load into throwaway namespaces and send real packets ---

// xtBackend is one iptables implementation: its restore and save commands.
type xtBackend struct{ name, v4, v6 string }

func (b xtBackend) tool(f Family, suffix string) string {
	base := b.v4
	if f == IPv6 {
		base = b.v6
	}
	return base + suffix
}

// TestIptablesNamespace loads both files with each iptables backend
// installed (legacy and nft) into a throwaway namespace "box", first with
// --test, then for real, and sends crafted packets to it from a second
// namespace "client": every case of xtCases must end as it does in the
// interpreter, round robin must spread new flows evenly, DNATed flows must
// be forwarded and masqueraded, other forwarded traffic from the clients
// dropped, and a --noflush reload must refill the private chains in place.
// Nothing is loaded into the namespace the test runs in.
func TestIptablesNamespace(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("skipping: iptables is Linux only")
	}
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root (to create network namespaces and load iptables rules into them)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("skipping: needs ip (iproute2)")
	}
	var backends []xtBackend
	for _, b := range []xtBackend{
		{"legacy", "iptables-legacy", "ip6tables-legacy"},
		{"nft", "iptables-nft", "ip6tables-nft"},
	} {
		if xtHasTools(b.v4+"-restore", b.v4+"-save", b.v4, b.v6+"-restore", b.v6+"-save", b.v6) {
			backends = append(backends, b)
		}
	}
	if len(backends) == 0 {
		if !xtHasTools("iptables-restore", "iptables-save", "iptables", "ip6tables-restore", "ip6tables-save", "ip6tables") {
			t.Skip("skipping: iptables is not installed (apt-get install iptables)")
		}
		backends = append(backends, xtBackend{"default", "iptables", "ip6tables"})
	}
	out := xtRenderBoth(t, testSettings(), listOf(t, xtListed...))
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) { testXTBackend(t, b, out) })
	}
}

func xtHasTools(names ...string) bool {
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			return false
		}
	}
	return true
}

// newXTNS creates a namespace named nftdns-ipt-<random> with `ip netns
// add` and deletes it when the test ends.
func newXTNS(t *testing.T) string {
	t.Helper()
	suffix := make([]byte, 5)
	if _, err := crand.Read(suffix); err != nil {
		t.Fatal(err)
	}
	name := "nftdns-ipt-" + hex.EncodeToString(suffix)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	return name
}

// xtInNS runs cmd in the namespace, with stdin, and returns its stdout.
func xtInNS(ns, stdin string, cmd ...string) (string, error) {
	c := exec.Command("ip", append([]string{"netns", "exec", ns}, cmd...)...)
	c.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	if err := c.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s: %w: %s", strings.Join(cmd, " "), err, stderr.String())
	}
	return stdout.String(), nil
}

func xtMustInNS(t *testing.T, ns string, cmd ...string) string {
	t.Helper()
	out, err := xtInNS(ns, "", cmd...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// xtRawSender opens an IPPROTO_RAW socket (the packet is sent as given,
// IP header included) in the namespace.
func xtRawSender(t *testing.T, ns string, f Family) *net.IPConn {
	t.Helper()
	network := "ip4:255"
	if f == IPv6 {
		network = "ip6:255"
	}
	var conn *net.IPConn
	var err error
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, e := netns.Get()
		if e != nil {
			runtime.UnlockOSThread()
			done <- e
			return
		}
		defer orig.Close()
		h, e := netns.GetFromName(ns)
		if e != nil {
			runtime.UnlockOSThread()
			done <- e
			return
		}
		defer h.Close()
		if e := netns.Set(h); e != nil {
			runtime.UnlockOSThread()
			done <- e
			return
		}
		conn, err = net.ListenIP(network, nil)
		if e := netns.Set(orig); e != nil {
			// The thread stays locked and dies with the goroutine.
			done <- fmt.Errorf("back to the original namespace: %w", e)
			return
		}
		runtime.UnlockOSThread()
		done <- nil
	}()
	if e := <-done; e != nil {
		t.Fatal(e)
	}
	if err != nil {
		t.Fatalf("raw socket in %s: %v", ns, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// xtCounter is one rule line of iptables-save -c and its packet count.
type xtCounter struct {
	rule string
	pkts uint64
}

func xtCounters(t *testing.T, ns, save, table string) []xtCounter {
	t.Helper()
	var out []xtCounter
	for _, line := range strings.Split(xtMustInNS(t, ns, save, "-c", "-t", table), "\n") {
		if !strings.HasPrefix(line, "[") {
			continue
		}
		cnt, rule, _ := strings.Cut(line, "] ")
		p, _, _ := strings.Cut(cnt[1:], ":")
		n, err := strconv.ParseUint(p, 10, 64)
		if err != nil {
			t.Fatalf("%s: counter %q", save, line)
		}
		out = append(out, xtCounter{rule, n})
	}
	return out
}

// xtDeltas sums, per rule matching keep, how many packets after has over
// before (the rule lists come from the same ruleset).
func xtDeltas(t *testing.T, before, after []xtCounter, keep func(rule string) bool) map[string]uint64 {
	t.Helper()
	if len(before) != len(after) {
		t.Fatalf("the ruleset changed between two counter reads")
	}
	d := map[string]uint64{}
	for i := range after {
		if keep(after[i].rule) && after[i].pkts != before[i].pkts {
			d[after[i].rule] += after[i].pkts - before[i].pkts
		}
	}
	return d
}

const xtSeenRule = "-A PREROUTING -m comment --comment seen"

func testXTBackend(t *testing.T, b xtBackend, out map[Family]string) {
	box, cli := newXTNS(t), newXTNS(t)
	for _, cmd := range [][]string{
		{"ip", "link", "set", "lo", "up"},
		{"ip", "link", "add", "v1", "type", "veth", "peer", "name", "v0", "netns", cli},
		{"ip", "link", "set", "v1", "up"},
		{"ip", "addr", "add", "198.18.1.1/24", "dev", "v1"},
		{"ip", "-6", "addr", "add", "2001:db8:1::1/64", "dev", "v1", "nodad"},
		// the upstreams' side: a veth pair with nobody behind it
		{"ip", "link", "add", "up0", "type", "veth", "peer", "name", "up1"},
		{"ip", "link", "set", "up0", "up"},
		{"ip", "link", "set", "up1", "up"},
		{"ip", "addr", "add", "198.18.2.1/24", "dev", "up0"},
		{"ip", "-6", "addr", "add", "2001:db8:2::1/64", "dev", "up0", "nodad"},
		{"sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"},
	} {
		xtMustInNS(t, box, cmd...)
	}
	for _, cmd := range [][]string{
		{"ip", "link", "set", "lo", "up"},
		{"ip", "link", "set", "v0", "up"},
		{"ip", "addr", "add", "198.18.1.10/24", "dev", "v0"},
		{"ip", "-6", "addr", "add", "2001:db8:1::10/64", "dev", "v0", "nodad"},
		{"ip", "route", "add", "default", "via", "198.18.1.1"},
		{"ip", "-6", "route", "add", "default", "via", "2001:db8:1::1"},
	} {
		xtMustInNS(t, cli, cmd...)
	}

	for _, f := range []Family{IPv4, IPv6} {
		restore := b.tool(f, "-restore")
		if _, err := xtInNS(box, out[f], restore, "--test"); err != nil {
			t.Fatalf("IPv%d %s --test refuses the ruleset: %v", f, restore, err)
		}
		if _, err := xtInNS(box, out[f], restore); err != nil {
			t.Fatalf("IPv%d %s refuses the ruleset: %v", f, restore, err)
		}
		// A counting rule ahead of the jumps: a packet has been through
		// raw PREROUTING once its counter moves.
		xtMustInNS(t, box, b.tool(f, ""), "-t", "raw", "-I", "PREROUTING", "1", "-m", "comment", "--comment", "seen")
	}

	for _, f := range []Family{IPv4, IPv6} {
		t.Run(fmt.Sprintf("IPv%d", f), func(t *testing.T) {
			send := xtRawSender(t, cli, f)
			save := b.tool(f, "-save")
			last := xtCounters(t, box, save, "raw")
			deliver := func(p xtPacket) (before, after []xtCounter) {
				t.Helper()
				before = last
				if _, err := send.WriteToIP(p.bytes(), &net.IPAddr{IP: p.dst.AsSlice()}); err != nil {
					t.Fatalf("send: %v", err)
				}
				for deadline := time.Now().Add(3 * time.Second); ; {
					after = xtCounters(t, box, save, "raw")
					if len(xtDeltas(t, before, after, func(r string) bool { return r == xtSeenRule })) > 0 {
						last = after
						return before, after
					}
					if time.Now().After(deadline) {
						t.Fatalf("a packet to %v never reached raw PREROUTING", p.dst)
					}
					time.Sleep(5 * time.Millisecond)
				}
			}
			for _, c := range xtCases(f) {
				if c.simOnly {
					continue
				}
				before, after := deliver(c.pkt)
				got := xtPass
				for rule := range xtDeltas(t, before, after, func(r string) bool { return strings.HasSuffix(r, " -j DROP") }) {
					got = xtDropOutcome(strings.Fields(rule)[1])
				}
				if got != c.want {
					t.Errorf("%s: %s, want %s", c.name, got, c.want)
				}
			}

			// Round robin, forwarding and masquerading of new flows.
			a := xtAddrsFor(f)
			nat0, fwd0 := xtCounters(t, box, save, "nat"), xtCounters(t, box, save, "filter")
			const flows = 6
			for i := range flows {
				deliver(xtPacket{fam: f, src: a.client, dst: a.listen, sport: uint16(40000 + i), payload: xtQuery(Wire("allowed.example"))})
			}
			upstreams := 0
			var upstream netip.Addr
			for _, u := range testSettings().Upstreams {
				if family(u.Addr()) == f {
					upstreams++
					upstream = u.Addr()
				}
			}
			deliver(xtPacket{fam: f, src: a.client, dst: upstream, sport: 40100, dport: 123, payload: []byte("ntp?")})
			want := map[string]uint64{"DNAT": flows, "MASQUERADE": flows, "ACCEPT": flows, "DROP": 1}
			var got map[string]uint64
			for deadline := time.Now().Add(3 * time.Second); ; {
				nat, fwd := xtCounters(t, box, save, "nat"), xtCounters(t, box, save, "filter")
				dnat := xtDeltas(t, nat0, nat, func(r string) bool { return strings.Contains(r, "-p udp") && strings.Contains(r, "-j DNAT") })
				got = map[string]uint64{}
				for rule, n := range dnat {
					got["DNAT"] += n
					if n != flows/uint64(upstreams) {
						t.Errorf("round robin over %d upstreams: %d of %d new flows to %s", upstreams, n, flows, rule)
					}
				}
				for _, n := range xtDeltas(t, nat0, nat, func(r string) bool { return strings.HasSuffix(r, "-j MASQUERADE") }) {
					got["MASQUERADE"] += n
				}
				for rule, n := range xtDeltas(t, fwd0, fwd, func(r string) bool { return strings.HasPrefix(r, "-A "+xtPrefix+"FWD-CLIENTS ") }) {
					got[strings.Fields(rule)[len(strings.Fields(rule))-1]] += n
				}
				if fmt.Sprint(got) == fmt.Sprint(want) || time.Now().After(deadline) {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("after %d new DNS flows and one other packet from a client: %v, want %v", flows, got, want)
			}
		})
	}

	// A --noflush reload refills the NFTDNS- chains in place, keeps other
	// rules, and appends the jump rules again (as documented).
	for _, f := range []Family{IPv4, IPv6} {
		before := xtCounters(t, box, b.tool(f, "-save"), "raw")
		if _, err := xtInNS(box, out[f], b.tool(f, "-restore"), "--noflush"); err != nil {
			t.Fatalf("IPv%d --noflush reload: %v", f, err)
		}
		after := xtCounters(t, box, b.tool(f, "-save"), "raw")
		count := func(cs []xtCounter, keep func(string) bool) int {
			n := 0
			for _, c := range cs {
				if keep(c.rule) {
					n++
				}
			}
			return n
		}
		own := func(r string) bool { return strings.HasPrefix(r, "-A "+xtPrefix) }
		jumps := func(r string) bool {
			return strings.HasPrefix(r, "-A PREROUTING ") && strings.Contains(r, "--comment "+xtComment)
		}
		seen := func(r string) bool { return r == xtSeenRule }
		if count(after, own) != count(before, own) || count(after, seen) != 1 || count(after, jumps) != 2*count(before, jumps) {
			t.Errorf("IPv%d --noflush reload: private rules %d -> %d, seen rule %d, jump rules %d -> %d",
				f, count(before, own), count(after, own), count(after, seen), count(before, jumps), count(after, jumps))
		}
	}
}

func benchmarkRenderIptables(b *testing.B, n int) {
	l := malwareLike(n, 1)
	b.ReportAllocs()
	for b.Loop() {
		out, err := RenderIptables(testSettings(), []*List{l})
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(len(out))/float64(n), "bytes/name")
	}
}

func BenchmarkRenderIptables10k(b *testing.B)  { benchmarkRenderIptables(b, 10_000) }
func BenchmarkRenderIptables100k(b *testing.B) { benchmarkRenderIptables(b, 100_000) }
