package rules

import (
	"bytes"
	"encoding/binary"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite golden files")

func testSettings() Settings {
	return Settings{
		Listen: []netip.Addr{netip.MustParseAddr("198.18.1.1"), netip.MustParseAddr("2001:db8:1::1")},
		Upstreams: []netip.AddrPort{
			netip.MustParseAddrPort("198.18.2.11:53"), netip.MustParseAddrPort("198.18.2.12:53"),
			netip.MustParseAddrPort("198.18.2.13:5353"), netip.MustParseAddrPort("[2001:db8:2::11]:53"),
		},
		Clients: []netip.Prefix{netip.MustParsePrefix("198.18.1.0/24"), netip.MustParsePrefix("2001:db8:1::/64")},
	}
}

func listOf(t testing.TB, names ...string) *List {
	t.Helper()
	l, err := ParseList(strings.NewReader(strings.Join(names, "\n")), "test.txt", ParseOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func mustCompile(t testing.TB, lists ...*List) *Ruleset {
	t.Helper()
	rs, err := Compile(testSettings(), lists)
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

// randomCase flips the case of letters at random.
func randomCase(r *rand.Rand, wire []byte) []byte {
	out := bytes.Clone(wire)
	for i, b := range out {
		if b >= 'a' && b <= 'z' && r.IntN(2) == 0 {
			out[i] = b - 0x20
		}
	}
	return out
}

func simOutcome(t testing.TB, s *sim, proto string, wire []byte) string {
	t.Helper()
	var pkt []byte
	if proto == "udp" {
		pkt = udpQuery(wire)
	} else {
		pkt = tcpPayload(wire)
	}
	out, err := s.run(proto, pkt)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func longName(total int, seed uint64) string {
	r := rand.New(rand.NewPCG(seed, 1))
	var labels []string
	left := total - 2 // wire length = presentation length + 2
	for left > 0 {
		n := min(left, 1+r.IntN(40))
		if left-n == 1 { // a label needs a dot before it
			n--
		}
		var b strings.Builder
		for range n {
			b.WriteByte("abcdefghijklmnopqrstuvwxyz0123456789-"[r.IntN(37)])
		}
		labels = append(labels, b.String())
		left -= n + 1
	}
	return strings.Join(labels, ".")
}

func TestCompiledLookupMatchesExactly(t *testing.T) {
	t.Parallel()
	long100 := longName(100, 1)
	long250 := longName(250, 2)
	long255 := longName(255, 3)
	listed := []string{"blocked.example", "a.b", "x", "googletagmanager.com", "abcdefghijklm.com",
		"with-hyphen.example", "0day.example", "_srv._tcp.example", long100, long250, long255,
		strings.Repeat("a", 62) + ".com"}
	for _, n := range listed {
		if _, err := NormalizeName(n); err != nil {
			t.Fatalf("test name %q: %v", n, err)
		}
	}
	rs := mustCompile(t, listOf(t, listed...))
	s := newSim(rs)
	r := rand.New(rand.NewPCG(7, 7))
	for _, proto := range []string{"udp", "tcp"} {
		for _, n := range listed {
			for range 20 {
				w := randomCase(r, Wire(n))
				if got := simOutcome(t, s, proto, w); got != outBlocked {
					t.Errorf("%s %q (%d wire bytes): %s, want blocked", proto, w, len(w), got)
				}
			}
		}
		pass := []string{"sub.blocked.example", "blocked.example.com", "xblocked.example", "blocked.exampl",
			"blocked.exampla", "a.bc", "xa.b", "y", "x0googletagmanager.com", "x-abcdefghijklm.com",
			"example", "b", long100[:len(long100)-1] + "q", "q" + long250[1:], long255[:len(long255)-1] + "_",
			strings.Repeat("a", 62) + ".co"}
		for _, n := range pass {
			if slicesContains(listed, n) {
				continue
			}
			if got := simOutcome(t, s, proto, Wire(n)); got != outPass {
				t.Errorf("%s %q: %s, want pass", proto, n, got)
			}
		}
	}
	if rs.Stats.Long != 4 || rs.Stats.Names != len(listed) {
		t.Errorf("stats = %+v", rs.Stats)
	}
}

func slicesContains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func TestHeaderGate(t *testing.T) {
	t.Parallel()
	s := newSim(mustCompile(t, listOf(t, "blocked.example")))
	base := udpQuery(Wire("allowed.example"))
	mod := func(f func(p []byte)) []byte { p := bytes.Clone(base); f(p); return p }
	tests := []struct {
		name string
		pkt  []byte
		want string
	}{
		{"ordinary", base, outPass},
		{"QR set", mod(func(p []byte) { p[10] |= 0x80 }), outMalformed},
		{"opcode notify", mod(func(p []byte) { p[10] |= 4 << 3 }), outMalformed},
		{"qdcount 2", mod(func(p []byte) { p[13] = 2 }), outMalformed},
		{"qdcount 0", mod(func(p []byte) { p[13] = 0 }), outMalformed},
		{"RD and CD kept", mod(func(p []byte) { p[10] |= 1; p[11] |= 0x10 }), outPass},
		{"truncated in name", base[:8+12+5], outMalformed},
		{"header only", base[:8+12], outMalformed},
	}
	for _, tt := range tests {
		got, err := s.run("udp", tt.pkt)
		if err != nil || got != tt.want {
			t.Errorf("%s: %s, %v; want %s", tt.name, got, err, tt.want)
		}
	}
}

// twinOf searches every label structure of the folded name for one other
// than the name's own, and returns the ordinary name it spells (nil if
// none). It enumerates parses directly, independently of foldAmbiguous.
func twinOf(wire []byte) []byte {
	k := len(wire)
	f := make([]byte, k)
	for i, b := range wire {
		f[i] = foldByte(b)
	}
	var found []byte
	var walk func(p int, q []byte)
	walk = func(p int, q []byte) {
		if found != nil {
			return
		}
		if p == k {
			if !bytes.Equal(bytes.ToLower(q), bytes.ToLower(wire)) || !sameStructure(q, wire) {
				found = bytes.Clone(q)
			}
			return
		}
		for _, v := range []int{int(f[p]), int(f[p] &^ 0x20)} {
			if v < 1 || v > 63 || p+1+v > k {
				continue
			}
			q2 := append(bytes.Clone(q), byte(v))
			ok := true
			for i := p + 1; i <= p+v; i++ {
				c, good := unfoldChar(f[i])
				if !good {
					ok = false
					break
				}
				q2 = append(q2, c)
			}
			if ok {
				walk(p+1+v, q2)
			}
		}
	}
	walk(0, nil)
	return found
}

func sameStructure(a, b []byte) bool {
	for p := 0; p < len(a); p += int(a[p]) + 1 {
		if a[p] != b[p] {
			return false
		}
	}
	return true
}

func unfoldChar(f byte) (byte, bool) {
	switch {
	case f >= 'a' && f <= 'z', f >= '0' && f <= '9', f == '-':
		return f, true
	case f == 0x7f:
		return '_', true
	}
	return 0, false
}

// ambiguousCandidates makes names whose labels have the lengths and
// characters where folding collides (lengths 13, 16-25, 45, 48-57; digits
// and hyphens), so fold twins are common among them.
func ambiguousCandidates(r *rand.Rand, n int) []string {
	lens := []int{1, 2, 13, 16, 17, 20, 25, 33, 45, 48, 50}
	var out []string
	for len(out) < n {
		var labels []string
		total := 0
		for range 1 + r.IntN(5) {
			l := lens[r.IntN(len(lens))]
			if total+l+1 > 200 {
				break
			}
			var b strings.Builder
			for range l {
				b.WriteByte("a-0123456789z_"[r.IntN(14)])
			}
			labels = append(labels, b.String())
			total += l + 1
		}
		if len(labels) > 0 {
			out = append(out, strings.Join(labels, "."))
		}
	}
	return out
}

func TestFoldAmbiguousAgainstEnumeration(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewPCG(11, 12))
	nAmb := 0
	for _, n := range ambiguousCandidates(r, 20000) {
		w := Wire(n)
		w = w[:len(w)-1]
		twin := twinOf(w)
		if got := foldAmbiguous(w); got != (twin != nil) {
			t.Fatalf("foldAmbiguous(%q) = %v, enumeration found twin %q", w, got, twin)
		}
		if twin != nil {
			nAmb++
		}
	}
	if nAmb < 10 {
		t.Fatalf("only %d ambiguous names among the candidates: the generator no longer exercises twins", nAmb)
	}
	// Ordinary-looking names are rarely ambiguous.
	for _, n := range []string{"example.com", "googletagmanager.com", "x0googletagmanager.com", "abcdefghijklm.com"} {
		w := Wire(n)
		if foldAmbiguous(w[:len(w)-1]) {
			t.Errorf("%s unexpectedly ambiguous", n)
		}
	}
}

// foldTwinPairs returns up to n ambiguous names (seeded) and, for each, a
// fold twin in wire format with its final zero byte.
func foldTwinPairs(r *rand.Rand, n int) (listed []string, twins [][]byte) {
	for _, name := range ambiguousCandidates(r, 20000) {
		w := Wire(name)
		if tw := twinOf(w[:len(w)-1]); tw != nil {
			listed = append(listed, name)
			twins = append(twins, append(tw, 0))
			if len(listed) == n {
				break
			}
		}
	}
	return listed, twins
}

func TestFoldTwinsNotOverblocked(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewPCG(21, 22))
	listed, twins := foldTwinPairs(r, 40)
	if len(listed) < 10 {
		t.Fatalf("found only %d ambiguous names", len(listed))
	}
	rs := mustCompile(t, listOf(t, listed...))
	if rs.Stats.Ambiguous < len(listed) {
		t.Fatalf("stats.Ambiguous = %d, want >= %d", rs.Stats.Ambiguous, len(listed))
	}
	// The per-query work must not grow with the number of ambiguous names:
	// each length chain holds at most two matcher rules (the folded set and
	// the ambiguous names' verdict map), so a query walks at most two
	// lookups per stage.
	for _, ch := range rs.Chains {
		if !strings.HasPrefix(ch.Name, "udp-len-") {
			continue
		}
		lookups := 0
		for _, r := range ch.Rules {
			for _, e := range r.Exprs {
				if _, ok := e.(Lookup); ok {
					lookups++
				}
			}
		}
		if lookups > 2*len(stagesFor(MaxWireLen-1)) {
			t.Errorf("%s walks %d lookups", ch.Name, lookups)
		}
	}
	s := newSim(rs)
	isListed := map[string]bool{}
	for _, n := range listed {
		isListed[string(Wire(n))] = true
	}
	for i, n := range listed {
		for _, proto := range []string{"udp", "tcp"} {
			if got := simOutcome(t, s, proto, randomCase(r, Wire(n))); got != outBlocked {
				t.Errorf("%s listed ambiguous %q: %s, want blocked", proto, n, got)
			}
			tw := twins[i]
			if isListed[string(bytes.ToLower(tw))] {
				continue
			}
			if got := simOutcome(t, s, proto, tw); got != outPass {
				t.Errorf("%s fold twin %q of %q: %s, want pass", proto, tw, n, got)
			}
		}
	}
	// Plain OR-0x20 folding could not tell them apart: the twins really
	// collide, so passing them above is the compiler's doing.
	fold := func(b []byte) string {
		out := make([]byte, len(b))
		for i := range b {
			out[i] = foldByte(b[i])
		}
		return string(out)
	}
	for i, n := range listed {
		w := Wire(n)
		if fold(w[:len(w)-1]) != fold(twins[i][:len(w)-1]) {
			t.Errorf("twin %q of %q does not fold to the same bytes", twins[i], n)
		}
	}
}

func TestCompileDeterministicAndGolden(t *testing.T) {
	t.Parallel()
	lists := []*List{
		listOf(t, "blocked.example", "0.0.0.0 ads.example tracker.example", "x-abcdefghijklm.com", longName(90, 5)),
		listOf(t, "second.example", "blocked.example"),
	}
	a := mustCompile(t, lists...).Render()
	for range 5 {
		if b := mustCompile(t, lists...).Render(); a != b {
			t.Fatal("Compile is not deterministic")
		}
	}
	checkGolden(t, "basic.nft.golden", a)
}

// checkGolden compares got with testdata/name, or rewrites the file with
// -update.
func checkGolden(t *testing.T, name, got string) {
	t.Helper()
	golden := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test ./rules -run Golden -update)", err)
	}
	if string(want) != got {
		t.Errorf("%s differs (rerun with -update and review the diff)", golden)
	}
}

func TestCompileSettingsErrors(t *testing.T) {
	t.Parallel()
	mod := func(f func(*Settings)) Settings { s := testSettings(); f(&s); return s }
	tests := []struct {
		name string
		s    Settings
		want string
	}{
		{"no listen", mod(func(s *Settings) { s.Listen = nil }), "no listen address"},
		{"no upstream", mod(func(s *Settings) { s.Upstreams = nil }), "no upstream"},
		{"no clients", mod(func(s *Settings) { s.Clients = nil }), "no client network"},
		{"v6 listen without v6 upstream", mod(func(s *Settings) { s.Upstreams = s.Upstreams[:3] }), "no IPv6 upstream"},
		{"host bits", mod(func(s *Settings) { s.Clients = []netip.Prefix{netip.MustParsePrefix("198.18.1.7/24")} }), "host bits"},
		{"bad action", mod(func(s *Settings) { s.Action = "explode" }), "must be one of drop"},
		{"bad table", mod(func(s *Settings) { s.Table = "a b" }), "table"},
	}
	for _, tt := range tests {
		_, err := Compile(tt.s, nil)
		if err == nil || !strings.Contains(err.Error(), tt.want) || !IsInputError(err) {
			t.Errorf("%s: err = %v, want input error containing %q", tt.name, err, tt.want)
		}
	}
}

func TestPrefixRangeAndMerge(t *testing.T) {
	t.Parallel()
	got := mergePrefixes([]netip.Prefix{netip.MustParsePrefix("198.18.1.0/24"), netip.MustParsePrefix("198.18.0.0/15"), netip.MustParsePrefix("192.0.2.0/24")})
	if fmt.Sprint(got) != "[192.0.2.0/24 198.18.0.0/15]" {
		t.Fatalf("merge = %v", got)
	}
	e := prefixRange(netip.MustParsePrefix("198.18.0.0/15"))
	if fmt.Sprint(e.Key, e.KeyEnd) != "[198 18 0 0] [198 20 0 0]" {
		t.Fatalf("range = %v %v", e.Key, e.KeyEnd)
	}
	if e := prefixRange(netip.MustParsePrefix("0.0.0.0/0")); e.KeyEnd != nil {
		t.Fatalf("/0 end = %v, want open", e.KeyEnd)
	}
}

func TestJhashKnownValues(t *testing.T) {
	t.Parallel()
	// lookup3's published hashlittle() test vectors (jhash is hashlittle
	// on a little-endian machine).
	for _, tc := range []struct {
		in   string
		seed uint32
		want uint32
	}{
		{"", 0, 0xdeadbeef},
		{"", 0xdeadbeef, 0xbd5b7dde},
		{"Four score and seven years ago", 0, 0x17770551},
		{"Four score and seven years ago", 1, 0xcd628161},
	} {
		if got := jhash([]byte(tc.in), tc.seed); got != tc.want {
			t.Errorf("jhash(%q, %#x) = %#x, want %#x", tc.in, tc.seed, got, tc.want)
		}
	}
}

func TestQuestionShapes(t *testing.T) {
	t.Parallel()
	s := newSim(mustCompile(t, listOf(t, "blocked.example")))
	blocked := Wire("blocked.example")
	// withTail builds a UDP query whose message continues after QCLASS.
	withTail := func(wire, tail []byte, arcount byte) []byte {
		p := udpQuery(wire)
		p[8+11] = arcount
		return append(p, tail...)
	}
	opt := func(rdata []byte) []byte { // root owner, type OPT, class 1232, ttl 0, rdlen
		o := []byte{0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, byte(len(rdata))}
		return append(o, rdata...)
	}
	cookie := append([]byte{0, 10, 0, 8}, bytes.Repeat([]byte{0xc7}, 8)...)
	padding := append([]byte{0, 12, 0, 40}, make([]byte, 40)...)
	tests := []struct {
		name string
		pkt  []byte
		want string
	}{
		{"plain", udpQuery(blocked), outBlocked},
		{"EDNS without options", withTail(blocked, opt(nil), 1), outBlocked},
		{"EDNS cookie (bytes >= 0x80 after the name)", withTail(blocked, opt(cookie), 1), outBlocked},
		{"EDNS padding", withTail(blocked, opt(padding), 1), outBlocked},
		{"trailing garbage, ARCOUNT 0", withTail(blocked, []byte{0xff, 0, 1, 2, 0}, 0), outBlocked},
		{"compression pointer to a hidden suffix", withTail([]byte("\x07blocked\xc0\x1e"), []byte("\x07example\x00"), 0), outMalformed},
		{"pointer as the first byte", withTail([]byte("\xc0\x10"), []byte("\x07blocked\x07example\x00"), 0), outMalformed},
		{"raw UTF-8 in a label", udpQuery([]byte("\x06caf\xc3\xa9s\x07example\x00")), outMalformed},
		{"allowed name with EDNS cookie", withTail(Wire("allowed.example"), opt(cookie), 1), outPass},
		{"no terminator within 255 bytes", udpQuery(bytes.Repeat([]byte{63}, 300)), outMalformed},
	}
	for _, tt := range tests {
		for _, proto := range []string{"udp", "tcp"} {
			pkt := tt.pkt
			if proto == "tcp" {
				msg := pkt[8:]
				pkt = append(binary.BigEndian.AppendUint16(nil, uint16(len(msg))), msg...)
			}
			got, err := s.run(proto, pkt)
			if err != nil || got != tt.want {
				t.Errorf("%s over %s: %s, %v; want %s", tt.name, proto, got, err, tt.want)
			}
		}
	}
}
