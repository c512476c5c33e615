package rules

// The classic technique, as iptables-restore input: the reference design the
// nftables ruleset is measured against, and a fallback for boxes without
// nf_tables. Everything here is text; nothing talks to the kernel.

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Private chains are named with this prefix; the only rules outside them are
// the jumps from the built-in chains, marked with this comment.
const (
	xtPrefix  = "NFTDNS-"
	xtComment = "nftdns"
)

// Round robin marks the connection with the upstream's index (from 1) in
// these bits of the conntrack mark, then DNATs by mark.
const (
	xtMarkMask  = 0xff000000
	xtMarkShift = 24
)

// Limits of the iptables extensions (iptables 1.8, any kernel).
const (
	xtStringMax   = 128   // XT_STRING_MAX_PATTERN_SIZE: longer names take two string matches
	xtU32Tests    = 10    // "&&"-joined tests one u32 match takes
	xtLimitScale  = 10000 // the limit match takes at most 10000/second...
	xtLimitBurst  = 10000 // ...and a burst of at most 10000
	xtMaxUpstream = xtMarkMask >> xtMarkShift
)

// RenderIptables writes the classic IPv4 ruleset for the settings and lists
// as iptables-restore input: the *raw table checks queries, *nat spreads the
// clients' queries to the listen addresses over the upstreams, *filter
// forwards nothing else from the client networks. It is the same policy as
// Compile's nftables table, done the way hand-written scripts did it, and it
// works with iptables-legacy-restore and iptables-nft-restore (xt_u32,
// xt_string, xt_statistic, xt_connmark, xt_conntrack, xt_limit, xt_comment,
// LOG, DNAT, MASQUERADE). The output depends only on the inputs. It returns
// an input error for settings Compile refuses, for a log rate or burst the
// limit match cannot take (more than 10000/second, burst above 10000), or
// for a name that is not normalised (see NormalizeName).
//
// Loading. All chains are private (NFTDNS-...); the built-in chains get only
// jump rules, marked "-m comment --comment nftdns". On a box or namespace
// dedicated to it, `iptables-restore < file` replaces the three tables.
// Alongside other rules, `iptables-restore --noflush < file` flushes and
// refills the NFTDNS- chains (each table commits on its own) and leaves other
// rules alone, but appends the jump rules again on every load: delete the
// old ones first (`iptables -t raw -D PREROUTING ...`, as iptables-save
// lists them).
//
// Who is checked (as in the nftables table): UDP and TCP queries to port 53
// from a client network, to any address; from elsewhere to a listen address
// they are dropped; anything else is not touched.
//
// The checks, in the raw PREROUTING chain (before conntrack, so blocked
// queries create no conntrack entries; while conntrack is in use, as the nat
// table and the conntrack match make it, fragments are reassembled before
// it):
//
//   - Layout gate. An IPv4 packet with IP options or a fragment that was
//     not reassembled, or an IPv6 one with an extension header between the
//     IPv6 header and UDP/TCP, is dropped: the string match takes offsets
//     from the start of the IP header, so anything that moves the name
//     would let it through. (No common client sends those to a resolver.)
//   - Header gate, with u32: QR=0, OPCODE=0 and QDCOUNT=1, else dropped.
//     Over TCP a segment without payload (handshake, ACKs) passes; one with
//     payload must start with the 2-byte length and a query header, as in
//     the nftables table: a client that sends the length and the message in
//     separate segments is refused, and of several messages in one segment
//     only the first is checked. Unlike the nftables table, a message that
//     ends inside the name matches no name and passes (the resolver answers
//     FORMERR).
//   - Two-level dispatch with u32 on the name's first two characters (name
//     bytes 1 and 2, after the first length byte): first to NFTDNS-UDP-x,
//     then to NFTDNS-UDP-xy, or to NFTDNS-UDP-x. when the first label is the
//     one character x (byte 0 is 1); NFTDNS-TCP-... for TCP. Letters are
//     compared with mask 0xDF,
//     every other byte exactly, so the dispatch is case-insensitive and
//     never confuses a digit or '-' with a length byte. A query walks past
//     at most one rule per distinct first character and one per distinct
//     second character, not one per name.
//   - One rule per listed name in its dispatch chain. Over UDP: a u32 test
//     that the byte at name+len-1 is the zero that ends the name, and
//     `-m string --algo bm --icase --hex-string "|07|example|03|com|00|"`
//     with --from at the name (IPv4: 20 IP + 8 UDP + 12 DNS header = 40;
//     IPv6: 40+8+12 = 60) and --to = --from + the wire length. The pattern is
//     the whole name in wire format with its zero byte; names over 128 bytes
//     (the string match's limit) are two string matches, at +0 and +128.
//     Over TCP the name's offset from the IP header depends on the TCP
//     options, which the string match cannot follow, so the name is compared
//     with u32 after the data offset ("0>>22&0x3C@12>>26&0x3C@N"), one test
//     per 4 bytes, 10 tests per u32 match, letters masked with 0xDF.
//   - A listed name: -m limit --limit LogRate --limit-burst LogBurst -j LOG
//     --log-prefix "nftdns: ", then DROP (one limit for the whole family).
//
// Exactness. The hand-written scripts matched `--hex-string "|07|example|03|com|"`
// anywhere in the packet: a substring match that also blocked
// sub.example.com, example.com.evil and names that merely contain those
// bytes (and, in TCP, any payload containing them), and passed EXAMPLE.com
// unless --icase was given. Here a query is blocked iff its question name is
// a listed name, compared byte for byte except that ASCII letters match in
// either case: the pattern ends with the zero byte and must lie within
// [--from, --to), which leaves exactly one place for it. That is the
// string match's behaviour since Linux 6.7 and the stable kernels that took
// "net: skb_find_text: Ignore patterns extending past 'to'" (Oct 2023).
// Before, a match only had to start by --to, so the pattern could also be
// found up to its own length later; the u32 terminator test rules that out
// for names of up to 128 wire bytes, one string match (a later occurrence
// would have to hold the name's only zero byte before its own end, or start
// in QTYPE). For longer names on such kernels the first 128 bytes could, in
// theory, match shifted within a name of the same length. The TCP u32 comparison is exact on every kernel. Case:
// --icase folds through the kernel's toupper(), which also folds Latin-1
// letters, but those never occur in a listed name, so for the patterns
// written here it folds a-z only; the u32 masks do the same. Not handled,
// as in the nftables table: compression pointers in the question name.
//
// NAT (for clients' queries to a listen address): the classic round robin.
// Only the first packet of a connection reaches the nat table. For N
// upstreams of the family, N rules `-m statistic --mode nth --every N
// --packet i -j CONNMARK --set-xmark i+1` (in bits 0xff000000 of the
// connection mark: a mark target does not end the chain, so every rule sees
// every new flow and the nth counters stay in step), then per upstream
// `-m connmark --mark i+1 -j DNAT --to-destination ADDR:PORT` for UDP and
// TCP. POSTROUTING masquerades DNATed flows from the clients to the
// upstreams; FORWARD accepts them (-m conntrack --ctstate DNAT) and drops
// everything else from the client networks. Replies are not touched: on a
// box whose FORWARD policy is DROP, accept established traffic as usual.
func RenderIptables(s Settings, lists []*List) (string, error) {
	return renderXtables(IPv4, s, lists)
}

// RenderIp6tables is RenderIptables for IPv6, as ip6tables-restore input:
// the settings' IPv6 listen addresses, client networks and upstreams. The
// name starts 60 bytes into the packet (40-byte IPv6 header, no extension
// headers); everything else is as for IPv4.
func RenderIp6tables(s Settings, lists []*List) (string, error) {
	return renderXtables(IPv6, s, lists)
}

// xtFamily holds where things are in a packet of one family.
type xtFamily struct {
	f     Family
	tool  string
	ipHdr int // fixed IP header length the layout gate enforces
}

// loc is the u32 location of the 4 bytes at offset off from t's payload base
// (the UDP header; for TCP the first byte after the TCP header and its
// options), off as in compile.go's transport (udp.nameOff, tcp.flagsOff...).
//
// IPv4: "0>>22&0x3C" is the IP header length (the low nibble of byte 0, in
// 32-bit words, times 4), and "@" moves there. For TCP, byte 12 of the TCP
// header holds the data offset in its high nibble: ">>26&0x3C" of the word
// at TCP+12 is the TCP header length in bytes, and a second "@" moves past
// it. IPv6: the gate allows no extension headers, so TCP/UDP starts at 40.
func (x xtFamily) loc(t transport, off uint32) string {
	switch {
	case x.f == IPv4 && t == udp:
		return fmt.Sprintf("0>>22&0x3C@%d", off)
	case x.f == IPv4:
		return fmt.Sprintf("0>>22&0x3C@12>>26&0x3C@%d", off)
	case t == udp:
		return fmt.Sprint(x.ipHdr + int(off))
	default:
		return fmt.Sprintf("%d>>26&0x3C@%d", x.ipHdr+12, x.ipHdr+int(off))
	}
}

// layoutGate is the u32 test that the transport header follows a fixed-size
// IP header: IPv4 with IHL 5 (byte 0 low nibble) and neither MF nor a
// fragment offset (bytes 6-7 & 0x3FFF); IPv6 with t's protocol as the next
// header (byte 6).
func (x xtFamily) layoutGate(t transport) string {
	if x.f == IPv4 {
		return "0>>24&0xF=0x5&&4&0x3FFF=0x0"
	}
	return fmt.Sprintf("4>>8&0xFF=0x%X", t.l4proto)
}

func (x xtFamily) gateNote(t transport) string {
	layout := "no IP options, no fragment"
	if x.f == IPv6 {
		layout = "no extension header"
	}
	if t == udp {
		return "gates: " + layout + " (the name must be at a fixed offset); QR=0, OPCODE=0, QDCOUNT=1"
	}
	return "gates: " + layout + "; a segment without payload passes; one with payload starts with a query: QR=0, OPCODE=0, QDCOUNT=1"
}

// tcpHasData is the u32 test that a TCP segment carries at least one byte of
// payload: the word ending at the first payload byte, at IP header + TCP
// header length - 3, lies inside the packet. u32 offsets only add up, so
// this takes the fixed IP header length the layout gate enforced.
func (x xtFamily) tcpHasData() string {
	return fmt.Sprintf("%d>>26&0x3C@%d=0x0:0xFFFFFFFF", x.ipHdr+12, x.ipHdr-3)
}

// headerGate is the u32 test for QR=0, OPCODE=0, QDCOUNT=1: the word at the
// DNS flags holds the flags (QR and OPCODE are the top 5 bits) and QDCOUNT
// (the low 16 bits).
func (x xtFamily) headerGate(t transport) string {
	return x.loc(t, t.flagsOff) + "&0xF800FFFF=0x1"
}

// u32Test is "LOC&MASK=VALUE" (the mask left out when it keeps everything).
func xtU32Cmp(loc string, mask, value uint32) string {
	if mask == 0xFFFFFFFF {
		return fmt.Sprintf("%s=0x%X", loc, value)
	}
	return fmt.Sprintf("%s&0x%X=0x%X", loc, mask, value)
}

// xtCaseMask is the per-byte mask that makes a comparison with the listed byte
// b case-insensitive: for a letter 0xDF (x&0xDF == b&0xDF holds for b and
// its upper-case form only), for every other byte (digits, '-', '_', length
// bytes, the final zero) 0xFF, an exact comparison.
func xtCaseMask(b byte) byte {
	if b >= 'a' && b <= 'z' {
		return 0xDF
	}
	return 0xFF
}

// xtTable collects one table's private chains and rules.
type xtTable struct {
	name   string
	chains []string
	lines  []string
}

func (t *xtTable) chain(name string) string {
	t.chains = append(t.chains, name)
	return name
}

func (t *xtTable) rule(format string, a ...any) {
	t.lines = append(t.lines, fmt.Sprintf("-A "+format, a...))
}

func (t *xtTable) note(text string) { t.lines = append(t.lines, "# "+text) }

// size is about the length of the table's text.
func (t *xtTable) size() int {
	n := 64
	for _, c := range t.chains {
		n += len(c) + 10
	}
	for _, l := range t.lines {
		n += len(l) + 1
	}
	return n
}

func (t *xtTable) write(b *strings.Builder) {
	fmt.Fprintf(b, "*%s\n", t.name)
	for _, c := range t.chains {
		fmt.Fprintf(b, ":%s - [0:0]\n", c)
	}
	for _, l := range t.lines {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	b.WriteString("COMMIT\n")
}

// xtDispatch is the dispatch tree of one transport: first character ->
// second character ("." when the first label is one character) -> names.
type xtDispatch map[byte]map[byte][]string

const xtOneCharLabel = '.'

func newXTDispatch(names []string) xtDispatch {
	d := xtDispatch{}
	for _, n := range names {
		w := Wire(n)
		c1, c2 := w[1], w[2]
		if w[0] == 1 {
			c2 = xtOneCharLabel
		}
		if d[c1] == nil {
			d[c1] = map[byte][]string{}
		}
		d[c1][c2] = append(d[c1][c2], n)
	}
	return d
}

func xtSortedKeys[V any](m map[byte]V) []byte {
	out := make([]byte, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func renderXtables(f Family, s Settings, lists []*List) (string, error) {
	if err := s.Validate(); err != nil {
		return "", err
	}
	if err := xtUnsupported(s); err != nil {
		return "", err
	}
	s = s.withDefaults()
	secs := [...]uint64{1, 60, 3600, 86400}[s.LogRate.Unit]
	if s.LogRate.N > xtLimitScale*secs {
		return "", inputErrorf("log rate %s: the iptables limit match takes at most %d/second", s.LogRate, xtLimitScale)
	}
	if s.LogBurst > xtLimitBurst {
		return "", inputErrorf("log burst %d: the iptables limit match takes at most %d", s.LogBurst, xtLimitBurst)
	}
	names, err := xtNames(lists)
	if err != nil {
		return "", err
	}
	x := xtFamily{f: IPv4, tool: "iptables", ipHdr: 20}
	if f == IPv6 {
		x = xtFamily{f: IPv6, tool: "ip6tables", ipHdr: 40}
	}
	var clients []netip.Prefix
	for _, p := range mergePrefixes(s.Clients) {
		if family(p.Addr()) == f {
			clients = append(clients, p)
		}
	}
	var listen []netip.Addr
	for _, a := range s.Listen {
		if family(a) == f {
			listen = append(listen, a.Unmap())
		}
	}
	listen = sortedAddrs(listen)
	var upstreams []netip.AddrPort // round robin in the operator's order
	var upAddrs []netip.Addr
	for _, u := range s.Upstreams {
		if family(u.Addr()) == f {
			u = netip.AddrPortFrom(u.Addr().Unmap(), u.Port())
			upstreams = append(upstreams, u)
			upAddrs = append(upAddrs, u.Addr())
		}
	}
	upAddrs = sortedAddrs(upAddrs)
	if len(upstreams) > xtMaxUpstream {
		return "", inputErrorf("%d IPv%d upstreams: the iptables ruleset numbers them in 8 bits of the connection mark (at most %d)", len(upstreams), f, xtMaxUpstream)
	}

	tables := []*xtTable{x.rawTable(s, clients, listen, names)}
	if len(listen) > 0 && len(upstreams) > 0 {
		tables = append(tables, xtNATTable(clients, listen, upstreams, upAddrs))
	}
	tables = append(tables, xtFilterTable(clients, upAddrs))
	size := 512
	for _, t := range tables {
		size += t.size()
	}
	var b strings.Builder
	b.Grow(size)
	fmt.Fprintf(&b, "# Generated by nftdns: the classic %s ruleset (IPv%d), %d names. Do not edit.\n", x.tool, f, len(names))
	fmt.Fprintf(&b, "# Dedicated box or namespace: %s-restore < FILE (replaces the tables below).\n", x.tool)
	fmt.Fprintf(&b, "# Shared: %s-restore --noflush < FILE refills the NFTDNS- chains and appends the\n", x.tool)
	b.WriteString("# jump rules (-m comment --comment nftdns) again: delete the old ones before a reload.\n")

	for _, t := range tables {
		t.write(&b)
	}
	return b.String(), nil
}

// xtNames is the sorted, deduplicated union of the lists' names. They are
// written into the ruleset, so anything but a normalised name is refused.
func xtNames(lists []*List) ([]string, error) {
	var all []string
	for _, l := range lists {
		for n := range l.Names {
			all = append(all, n)
		}
	}
	slices.Sort(all)
	all = slices.Compact(all)
	for _, n := range all {
		if norm, err := NormalizeName(n); err != nil || norm != n {
			return nil, inputErrorf("name %q is not a normalised name", n)
		}
	}
	return all, nil
}

func (x xtFamily) rawTable(s Settings, clients []netip.Prefix, listen []netip.Addr, names []string) *xtTable {
	t := &xtTable{name: "raw"}
	block := t.chain(xtPrefix + "BLOCK")
	for _, tr := range []transport{udp, tcp} {
		t.chain(xtPrefix + "DNS-" + strings.ToUpper(tr.name))
	}
	for _, tr := range []transport{udp, tcp} {
		t.chain(xtPrefix + "QUERY-" + strings.ToUpper(tr.name))
	}
	d := newXTDispatch(names)
	for _, tr := range []transport{udp, tcp} {
		for _, c1 := range xtSortedKeys(d) {
			t.chain(xtDispatchChain(tr, c1, 0))
			for _, c2 := range xtSortedKeys(d[c1]) {
				t.chain(xtDispatchChain(tr, c1, c2))
			}
		}
	}

	for _, tr := range []transport{udp, tcp} {
		t.rule("PREROUTING -p %s -m %s --dport %d -m comment --comment %s -j %sDNS-%s",
			tr.name, tr.name, DNSPort, xtComment, xtPrefix, strings.ToUpper(tr.name))
	}
	t.note("a listed name: log (rate-limited) and drop")
	t.rule("%s -m limit --limit %s --limit-burst %d -j LOG --log-prefix \"nftdns: \"", block, s.LogRate, s.LogBurst)
	t.rule("%s -j DROP", block)

	for _, tr := range []transport{udp, tcp} {
		T := strings.ToUpper(tr.name)
		dns, query := xtPrefix+"DNS-"+T, xtPrefix+"QUERY-"+T
		t.note(fmt.Sprintf("%s queries: from a client network checked, to a listen address from elsewhere dropped", T))
		for _, c := range clients {
			t.rule("%s -s %s -g %s", dns, c, query)
		}
		for _, a := range listen {
			t.rule("%s -d %s -j DROP", dns, xtHostPrefix(a))
		}

		t.note(x.gateNote(tr))
		if tr == udp {
			t.rule("%s -m u32 ! --u32 \"%s&&%s\" -j DROP", query, x.layoutGate(tr), x.headerGate(tr))
		} else {
			t.rule("%s -m u32 ! --u32 \"%s\" -j DROP", query, x.layoutGate(tr))
			t.rule("%s -m u32 ! --u32 \"%s\" -j RETURN", query, x.tcpHasData())
			t.rule("%s -m u32 ! --u32 \"%s\" -j DROP", query, x.headerGate(tr))
		}
		if len(names) > 0 {
			t.note("dispatch on the first character of the name (name byte 1), letters in either case")
		}
		nameWord := x.loc(tr, tr.nameOff) // name bytes 0-3: length, first three characters
		for _, c1 := range xtSortedKeys(d) {
			m := uint32(xtCaseMask(c1))
			t.rule("%s -m u32 --u32 \"%s\" -g %s", query, xtU32Cmp(nameWord, m<<16, uint32(c1)&m<<16), xtDispatchChain(tr, c1, 0))
		}
		for _, c1 := range xtSortedKeys(d) {
			l1 := xtDispatchChain(tr, c1, 0)
			for _, c2 := range xtSortedKeys(d[c1]) {
				var test string
				if c2 == xtOneCharLabel {
					test = xtU32Cmp(nameWord, 0xFF000000, 1<<24)
				} else {
					m := uint32(xtCaseMask(c2))
					test = xtU32Cmp(nameWord, m<<8, uint32(c2)&m<<8)
				}
				t.rule("%s -m u32 --u32 \"%s\" -g %s", l1, test, xtDispatchChain(tr, c1, c2))
			}
		}
		for _, c1 := range xtSortedKeys(d) {
			for _, c2 := range xtSortedKeys(d[c1]) {
				ch := xtDispatchChain(tr, c1, c2)
				for _, n := range d[c1][c2] {
					if tr == udp {
						t.rule("%s %s -j %s", ch, x.udpNameMatch(n), block)
					} else {
						t.rule("%s %s -j %s", ch, x.tcpNameMatch(n), block)
					}
				}
			}
		}
	}
	return t
}

// xtDispatchChain names the dispatch chain for a first character (c2 == 0) or
// a first and second character.
func xtDispatchChain(t transport, c1, c2 byte) string {
	name := xtPrefix + strings.ToUpper(t.name) + "-" + string(c1)
	if c2 != 0 {
		name += string(c2)
	}
	return name
}

// udpNameMatch matches the question name over UDP exactly (letters in either
// case): the terminating zero at its place, then the wire name at the
// name's offset from the IP header, in pieces of at most 128 bytes each
// pinned to its place by --from/--to.
func (x xtFamily) udpNameMatch(name string) string {
	w := Wire(name)
	L := uint32(len(w))
	parts := []string{"-m u32 --u32 \"" + xtU32Cmp(x.loc(udp, udp.nameOff+L-4), 0xFF, 0) + "\""}
	from := x.ipHdr + int(udp.nameOff)
	for off := 0; off < len(w); off += xtStringMax {
		chunk := w[off:min(len(w), off+xtStringMax)]
		parts = append(parts, fmt.Sprintf("-m string --hex-string \"%s\" --algo bm --from %d --to %d --icase",
			xtHexString(chunk), from+off, from+off+len(chunk)))
	}
	return strings.Join(parts, " ")
}

// tcpNameMatch matches the question name over TCP exactly (letters in either
// case) with u32 words after the TCP header: one test per 4 bytes, the last
// one overlapping the one before so that no byte after the name is read
// (for a 3-byte name it starts at the last byte of ARCOUNT, masked out).
func (x xtFamily) tcpNameMatch(name string) string {
	w := Wire(name)
	L := len(w)
	var offs []int
	for off := 0; off+4 <= L; off += 4 {
		offs = append(offs, off)
	}
	if L%4 != 0 {
		offs = append(offs, L-4)
	}
	var tests []string
	for _, off := range offs {
		var mask, value uint32
		for i := range 4 {
			var m, v byte
			if p := off + i; p >= 0 {
				m = xtCaseMask(w[p])
				v = w[p] & m
			}
			mask = mask<<8 | uint32(m)
			value = value<<8 | uint32(v)
		}
		tests = append(tests, xtU32Cmp(x.loc(tcp, uint32(int(tcp.nameOff)+off)), mask, value))
	}
	var parts []string
	for len(tests) > 0 {
		n := min(len(tests), xtU32Tests)
		parts = append(parts, "-m u32 --u32 \""+strings.Join(tests[:n], "&&")+"\"")
		tests = tests[n:]
	}
	return strings.Join(parts, " ")
}

// xtHexString writes wire bytes for --hex-string: label characters as they
// are, everything else (length bytes, the final zero) as |hex|.
func xtHexString(w []byte) string {
	var b strings.Builder
	inHex := false
	for _, c := range w {
		lit := c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_'
		if lit == inHex {
			b.WriteByte('|')
			inHex = !inHex
		}
		if lit {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%02x", c)
		}
	}
	if inHex {
		b.WriteByte('|')
	}
	return b.String()
}

func xtHostPrefix(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, a.BitLen()) }

func xtNATTable(clients []netip.Prefix, listen []netip.Addr, upstreams []netip.AddrPort, upAddrs []netip.Addr) *xtTable {
	t := &xtTable{name: "nat"}
	nat := t.chain(xtPrefix + "NAT")
	natClients := t.chain(xtPrefix + "NAT-CLIENTS")
	rr := t.chain(xtPrefix + "RR")
	post := t.chain(xtPrefix + "POST")
	postClients := t.chain(xtPrefix + "POST-CLIENTS")
	for _, tr := range []transport{udp, tcp} {
		t.rule("PREROUTING -p %s -m %s --dport %d -m comment --comment %s -j %s", tr.name, tr.name, DNSPort, xtComment, nat)
	}
	t.rule("POSTROUTING -m conntrack --ctstate DNAT -m comment --comment %s -j %s", xtComment, post)
	t.note("queries to a listen address from a client network go round robin")
	for _, a := range listen {
		t.rule("%s -d %s -g %s", nat, xtHostPrefix(a), natClients)
	}
	for _, c := range clients {
		t.rule("%s -s %s -g %s", natClients, c, rr)
	}
	n := len(upstreams)
	t.note(fmt.Sprintf("every rule sees every new flow, so the %d nth counters stay in step; the connection mark picks the upstream", n))
	for i := range upstreams {
		t.rule("%s -m statistic --mode nth --every %d --packet %d -j CONNMARK --set-xmark 0x%x/0x%x", rr, n, i, (i+1)<<xtMarkShift, xtMarkMask)
	}
	for i, u := range upstreams {
		for _, tr := range []transport{udp, tcp} {
			t.rule("%s -p %s -m connmark --mark 0x%x/0x%x -j DNAT --to-destination %s", rr, tr.name, (i+1)<<xtMarkShift, xtMarkMask, u)
		}
	}
	t.note("replies must come back through the box")
	for _, a := range upAddrs {
		t.rule("%s -d %s -g %s", post, xtHostPrefix(a), postClients)
	}
	for _, c := range clients {
		t.rule("%s -s %s -j MASQUERADE", postClients, c)
	}
	return t
}

func xtFilterTable(clients []netip.Prefix, upAddrs []netip.Addr) *xtTable {
	t := &xtTable{name: "filter"}
	fwd := t.chain(xtPrefix + "FWD")
	fwdClients := t.chain(xtPrefix + "FWD-CLIENTS")
	t.rule("FORWARD -m comment --comment %s -j %s", xtComment, fwd)
	t.note("clients get DNS through the box and nothing else")
	for _, c := range clients {
		t.rule("%s -s %s -g %s", fwd, c, fwdClients)
	}
	for _, a := range upAddrs {
		t.rule("%s -d %s -m conntrack --ctstate DNAT -j ACCEPT", fwdClients, xtHostPrefix(a))
	}
	t.rule("%s -j DROP", fwdClients)
	return t
}
