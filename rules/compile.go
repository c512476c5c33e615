package rules

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
)

// Where things are in a DNS query (DESIGN.md §2). Over UDP the DNS header
// starts right after the 8-byte UDP header; over TCP the message follows a
// 2-byte length prefix, and the inner-header base (@ih) already starts after
// the TCP header and its options.
type transport struct {
	name     string
	l4proto  byte
	base     Base
	flagsOff uint32 // QR, OPCODE, ... (2 bytes)
	qdOff    uint32 // QDCOUNT (2 bytes)
	nameOff  uint32 // first byte of the question name
}

var (
	udp = transport{name: "udp", l4proto: 17, base: BaseTransport, flagsOff: 8 + 2, qdOff: 8 + 4, nameOff: 8 + 12}
	tcp = transport{name: "tcp", l4proto: 6, base: BaseInner, flagsOff: 2 + 2, qdOff: 2 + 4, nameOff: 2 + 12}
)

// Name windows are cut into stages: the first 64 bytes (the largest set key
// the kernel takes), then 48-byte chunks keyed together with a 4-byte hash of
// the previous stage's key (see addMatcher).
const (
	firstStageLen = 64
	laterStageLen = 48
	hashModulus   = 0xffffffff
)

// Chain names.
const (
	chainPreroutingRaw = "prerouting-raw"
	chainNATPrerouting = "nat-prerouting"
	chainNATPost       = "nat-postrouting"
	chainForward       = "forward-filter"
)

// Compile turns the settings and lists into the table nftdns programs. The
// result depends only on its inputs: same input, byte-identical output.
func Compile(s Settings, lists []*List) (*Ruleset, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	if err := s.ValidateLists(lists); err != nil {
		return nil, err
	}
	s = s.withDefaults()
	c := &compiler{s: s, rs: &Ruleset{
		Table:    s.Table,
		Comment:  "managed by nftdns: rewritten by every apply, do not edit",
		Counters: append(AllCounters(), optionCounters(s)...),
	}}
	for i := range lists {
		c.rs.Counters = append(c.rs.Counters, ListCounter(i))
	}
	c.addAddressSets()
	lists = c.resolveSuffixes(lists)
	byLen := groupNames(lists)
	c.rs.Stats.Lengths = len(byLen)
	for _, group := range byLen {
		c.addLength(group)
	}
	for _, t := range []transport{udp, tcp} {
		c.addTransportChains(t)
	}
	c.addOutcomeChains(lists)
	c.rs.Chains = append(c.rs.Chains, c.verify...)
	c.rs.Chains = append(c.rs.Chains, c.suffixChains...)
	c.rs.Chains = append(c.rs.Chains, c.tcpEndChains...)
	c.addBaseChains()
	return c.rs, nil
}

type compiler struct {
	s  Settings
	rs *Ruleset
	// lengths are the listed wire lengths, ascending; match[L] are the
	// matchers for names of length L (one per transform), shared by the
	// UDP and TCP chains, which differ only in the payload base.
	lengths []int
	match   map[int][]matcher
	verify  []*Chain // chains the ambiguous-name verdict maps jump to
	suffix  *suffixPlan
	// suffixChains are the boundary chains the suffix dispatch map jumps
	// to (suffix.go).
	suffixChains []*Chain
	tcpEndChains []*Chain // tcpsegment.go
}

// lengthGroup holds the names of one wire length, sorted, and for each the
// index of the first list holding it (nil when there is only one list).
type lengthGroup struct {
	wireLen int
	names   []string
	lists   []int32
}

// listed is a name and the first list (in command-line/config order) that
// holds it: that list decides the name's outcome.
type listed struct {
	name string
	list int32
}

func groupNames(lists []*List) []lengthGroup {
	total := 0
	for _, l := range lists {
		total += len(l.Names)
	}
	// Sorting and compacting dedupes across lists without a second map
	// of every name (at 1M names the map costs more than the sort). Equal
	// names sort by list index, so compacting keeps the first list's.
	all := make([]listed, 0, total)
	for i, l := range lists {
		if l.Allow {
			continue
		}
		for n := range l.Names {
			all = append(all, listed{n, int32(i)})
		}
	}
	slices.SortFunc(all, func(a, b listed) int {
		if c := strings.Compare(a.name, b.name); c != 0 {
			return c
		}
		return int(a.list - b.list)
	})
	all = slices.CompactFunc(all, func(a, b listed) bool { return a.name == b.name })
	var count [MaxWireLen + 1]int
	for _, n := range all {
		count[WireLen(n.name)]++
	}
	var byLen [MaxWireLen + 1]lengthGroup
	for L, c := range count {
		byLen[L] = lengthGroup{wireLen: L, names: make([]string, 0, c)}
		if len(lists) > 1 {
			byLen[L].lists = make([]int32, 0, c)
		}
	}
	for _, n := range all {
		g := &byLen[WireLen(n.name)]
		g.names = append(g.names, n.name)
		if g.lists != nil {
			g.lists = append(g.lists, n.list)
		}
	}
	var out []lengthGroup
	for _, g := range byLen {
		if len(g.names) > 0 {
			out = append(out, g)
		}
	}
	return out
}

// matcher is one way of matching names of one length: a transform applied
// to the name bytes in the kernel ((b & mask) ^ xor per byte) and the staged
// sets holding the transformed names.
type matcher struct {
	wireLen int
	// off is where the matched window starts in the name: 0 for whole
	// names; for a suffix window of a name of length L, L - wireLen.
	off     uint32
	mask    []byte // per name byte
	xor     []byte
	sets    []string // one per stage
	seeds   []uint32 // hash seed per stage (0 for the first)
	keyLens []uint32
	// vmap: the last stage is a verdict map whose verdicts jump to the
	// chains that tell a listed ambiguous name from its fold twins.
	vmap bool
}

func (c *compiler) addLength(g lengthGroup) {
	L := g.wireLen
	k := L - 1 // the zero byte at the end is checked by the scan, not keyed
	c.rs.Stats.Names += len(g.names)
	c.rs.Stats.MaxWire = max(c.rs.Stats.MaxWire, L)
	if k > firstStageLen {
		c.rs.Stats.Long += len(g.names)
	}
	folded := make([][]byte, 0, len(g.names))
	var ambiguous [][]byte
	// With several lists, each name's last stage is a verdict map element
	// that goes to its list's outcome chain.
	var foldedTo []string
	var ambLists []int32
	// One backing array for the group: a million small slices would cost
	// more in allocation and GC than the compile itself.
	backing := make([]byte, 0, len(g.names)*L)
	for i, n := range g.names {
		start := len(backing)
		backing = appendWire(backing, n)
		w := backing[start : start+k : start+k]
		list := int32(0)
		if g.lists != nil {
			list = g.lists[i]
		}
		if foldAmbiguous(w) {
			c.rs.Stats.Ambiguous++
			ambiguous = append(ambiguous, w)
			ambLists = append(ambLists, list)
			continue
		}
		folded = append(folded, w)
		if g.lists != nil {
			foldedTo = append(foldedTo, c.outcomeChain(udp, int(list)))
		}
	}
	if c.match == nil {
		c.match = map[int][]matcher{}
	}
	c.lengths = append(c.lengths, L)
	mask := bytes.Repeat([]byte{foldMask}, k)
	xor := bytes.Repeat([]byte{foldXor}, k)
	if len(folded) > 0 {
		c.match[L] = append(c.match[L], c.addMatcher(fmt.Sprintf("name-%d", L), L, mask, xor, folded, foldedTo))
	}
	if len(ambiguous) > 0 {
		// Ambiguous names are looked up by their folded form too, in a
		// verdict map; each folded key jumps to a small chain that
		// compares the name exactly where it is not a letter. So a query
		// walks at most one more lookup and a few compares, however many
		// ambiguous names there are.
		c.match[L] = append(c.match[L], c.addMatcher(fmt.Sprintf("amb-%d", L), L, mask, xor, ambiguous, c.verifyChains(L, ambiguous, ambLists)))
	}
}

// verifyChains makes, for ambiguous names of wire length L, one chain per
// distinct folded form, holding per transport one rule per listed name with
// that form: the name's bytes under its exact mask (letters folded, every
// other byte exact) must equal the listed name's. It returns the chain name
// for each name, in order.
func (c *compiler) verifyChains(L int, names [][]byte, lists []int32) []string {
	folded := make([]string, len(names))
	byFold := map[string][]int{}
	for i, w := range names {
		f := make([]byte, len(w))
		for j, b := range w {
			f[j] = foldByte(b)
		}
		folded[i] = string(f)
		byFold[folded[i]] = append(byFold[folded[i]], i)
	}
	folds := make([]string, 0, len(byFold))
	for f := range byFold {
		folds = append(folds, f)
	}
	sort.Strings(folds)
	chainOf := map[string]string{}
	for _, f := range folds {
		// Named after the folded form, not its rank, so a name added or
		// removed changes its own chain only and an incremental apply can
		// add or drop that one chain (nft.ApplyOver).
		sum := sha256.Sum256([]byte(f))
		name := fmt.Sprintf("amb-%d-%x", L, sum[:16])
		chainOf[f] = name
		ch := &Chain{Name: name, Comment: fmt.Sprintf("tell listed names of %d bytes from their fold twins", L)}
		for _, t := range []transport{udp, tcp} {
			for _, ni := range byFold[f] {
				w := names[ni]
				r := newRule().l4proto(t)
				m := exactMask(w)
				for _, p := range pieces(stage{0, len(w)}) {
					want := make([]byte, p.n)
					for j := range want {
						want[j] = w[p.off+j] & m[p.off+j]
					}
					off := t.nameOff + uint32(p.off)
					r.add(fmt.Sprintf("@%s,%d,%d & 0x%x == 0x%x", t.base, off*8, p.n*8, m[p.off:p.off+p.n], want),
						Payload{Base: t.base, Offset: off, Len: uint32(p.n), Dst: 0},
						Bitwise{Src: 0, Dst: 0, Len: uint32(p.n), Mask: slices.Clone(m[p.off : p.off+p.n]), Xor: make([]byte, p.n)},
						Cmp{Op: CmpEq, Src: 0, Data: want})
				}
				ch.Rules = append(ch.Rules, r.verdict(Goto, c.outcomeChain(t, int(lists[ni]))).rule())
			}
		}
		c.verify = append(c.verify, ch)
	}
	out := make([]string, len(names))
	for i, f := range folded {
		out[i] = chainOf[f]
	}
	return out
}

// stage is a byte range of the name window.
type stage struct{ off, n int }

func stagesFor(k int) []stage {
	st := []stage{{0, min(k, firstStageLen)}}
	for off := firstStageLen; off < k; off += laterStageLen {
		st = append(st, stage{off, min(laterStageLen, k-off)})
	}
	return st
}

func round4(n int) int { return (n + 3) &^ 3 }

// stageOneKeyLen is the set key length for a first stage of n bytes, as nft
// computes it: one field keeps its exact length, a concatenation of 16-byte
// loads pads its last field to 4 bytes.
func stageOneKeyLen(n int) int {
	if n <= 16 {
		return n
	}
	return round4(n)
}

// addMatcher creates the stage sets for names (wire bytes without the final
// zero) under the transform. Stage 1 is keyed on the transformed first 64
// bytes. Stage i>1 is keyed on hash(key of stage i-1) followed by the next
// 48 bytes; a query reaches stage i only if its stage i-1 key is a member,
// and the seed is chosen so the hash is injective over those members, so the
// chain of stages matches exactly the listed names.
func (c *compiler) addMatcher(prefix string, L int, mask, xor []byte, names [][]byte, jumpTo []string) matcher {
	k := L - 1
	st := stagesFor(k)
	m := matcher{wireLen: L, mask: mask, xor: xor, vmap: jumpTo != nil}
	transformed := make([][]byte, len(names))
	tb := make([]byte, len(names)*k)
	for i, w := range names {
		t := tb[i*k : (i+1)*k : (i+1)*k]
		for j, b := range w {
			t[j] = (b & mask[j]) ^ xor[j]
		}
		transformed[i] = t
	}
	var parents [][]byte // key of the previous stage, per name
	for si, sg := range st {
		name := prefix
		if si > 0 {
			name = fmt.Sprintf("%s-s%d", prefix, si+1)
		}
		keys := make([][]byte, len(transformed))
		var seed uint32
		if si == 0 {
			kl := stageOneKeyLen(sg.n)
			kb := make([]byte, len(transformed)*kl)
			for i, t := range transformed {
				key := kb[i*kl : (i+1)*kl : (i+1)*kl]
				copy(key, t[sg.off:sg.off+sg.n])
				keys[i] = key
			}
		} else {
			seed = injectiveSeed(parents)
			kl := 4 + round4(sg.n)
			kb := make([]byte, len(transformed)*kl)
			for i, t := range transformed {
				key := kb[i*kl : (i+1)*kl : (i+1)*kl]
				binary.LittleEndian.PutUint32(key, nftHash(parents[i], seed, hashModulus))
				copy(key[4:], t[sg.off:sg.off+sg.n])
				keys[i] = key
			}
		}
		set := &Set{
			Name:    name,
			Comment: fmt.Sprintf("names of %d wire bytes, stage %d", L, si+1),
			KeyType: TypeRaw,
			KeyLen:  uint32(len(keys[0])),
			Typeof:  stageTypeof(si, sg),
		}
		if jumpTo != nil && si == len(st)-1 {
			// The last stage as a verdict map: for ambiguous names, from
			// the key to the chain that verifies the name exactly; with
			// several lists, from the key to its list's outcome chain.
			set.DataType = TypeVerdict
			seen := map[string]bool{}
			for i, key := range keys {
				if !seen[string(key)] {
					seen[string(key)] = true
					set.Elements = append(set.Elements, Element{Key: key, Verdict: &Verdict{Kind: Goto, Chain: jumpTo[i]}})
				}
			}
			slices.SortFunc(set.Elements, func(a, b Element) int { return bytes.Compare(a.Key, b.Key) })
		} else {
			uniq := uniqueSorted(keys)
			set.Elements = make([]Element, len(uniq))
			for i, key := range uniq {
				set.Elements[i] = Element{Key: key}
			}
		}
		c.rs.Sets = append(c.rs.Sets, set)
		m.sets = append(m.sets, name)
		m.seeds = append(m.seeds, seed)
		m.keyLens = append(m.keyLens, set.KeyLen)
		parents = keys
	}
	return m
}

// injectiveSeed finds the first seed under which the distinct parent keys
// hash to distinct values.
func injectiveSeed(parents [][]byte) uint32 {
	distinct := uniqueSorted(parents)
	for seed := uint32(1); ; seed++ {
		seen := make(map[uint32]bool, len(distinct))
		ok := true
		for _, p := range distinct {
			h := nftHash(p, seed, hashModulus)
			if seen[h] {
				ok = false
				break
			}
			seen[h] = true
		}
		if ok {
			return seed
		}
	}
}

func uniqueSorted(keys [][]byte) [][]byte {
	out := slices.Clone(keys)
	slices.SortFunc(out, bytes.Compare)
	return slices.CompactFunc(out, bytes.Equal)
}

// stageTypeof describes a stage key for nft's typeof, as seen over UDP.
func stageTypeof(si int, sg stage) []Field {
	var f []Field
	if si > 0 {
		// The hash has no payload of its own; nft only needs a 32-bit field
		// to print the key.
		f = append(f, Field{Base: BaseTransport, OffsetBits: 0, LenBits: 32})
	}
	for _, p := range pieces(sg) {
		f = append(f, Field{Base: BaseTransport, OffsetBits: (udp.nameOff + uint32(p.off)) * 8, LenBits: uint32(p.n) * 8})
	}
	return f
}

// pieces cuts a stage into loads of at most 16 bytes, the most a bitwise
// expression takes (DESIGN.md §3).
func pieces(sg stage) []stage {
	var out []stage
	for off := sg.off; off < sg.off+sg.n; off += 16 {
		out = append(out, stage{off, min(16, sg.off+sg.n-off)})
	}
	return out
}

// --- rule building ---

// rb builds one rule's expressions and its nft text side by side, so the
// rendered text and the programmed rule cannot drift apart.
type rb struct {
	exprs []Expr
	text  []string
}

func (r *rb) add(text string, e ...Expr) *rb {
	r.exprs = append(r.exprs, e...)
	if text != "" {
		r.text = append(r.text, text)
	}
	return r
}

func (r *rb) rule() Rule { return Rule{Exprs: r.exprs, Text: strings.Join(r.text, " ")} }

func newRule() *rb { return &rb{} }

func familyName(f Family) string {
	if f == IPv4 {
		return "ipv4"
	}
	return "ipv6"
}

func (r *rb) nfproto(f Family) *rb {
	v := byte(2) // NFPROTO_IPV4
	if f == IPv6 {
		v = 10
	}
	return r.add("meta nfproto "+familyName(f), Meta{Key: MetaNFProto, Dst: 0}, Cmp{Op: CmpEq, Src: 0, Data: []byte{v}})
}

func (r *rb) l4proto(t transport) *rb {
	return r.add("meta l4proto "+t.name, Meta{Key: MetaL4Proto, Dst: 0}, Cmp{Op: CmpEq, Src: 0, Data: []byte{t.l4proto}})
}

func (r *rb) dport(port uint16) *rb {
	return r.add(fmt.Sprintf("th dport %d", port),
		Payload{Base: BaseTransport, Offset: 2, Len: 2, Dst: 0},
		Cmp{Op: CmpEq, Src: 0, Data: binary.BigEndian.AppendUint16(nil, port)})
}

// addrInSet matches the source (or destination) address against a set of
// the family's addresses.
func (r *rb) addrInSet(f Family, dst bool, set string, invert bool) *rb {
	off, n, kw := uint32(12), uint32(4), "ip saddr"
	if f == IPv6 {
		off, n, kw = 8, 16, "ip6 saddr"
	}
	if dst {
		off += n
		kw = strings.Replace(kw, "saddr", "daddr", 1)
	}
	op := ""
	if invert {
		op = "!= "
	}
	return r.add(fmt.Sprintf("%s %s@%s", kw, op, set),
		Payload{Base: BaseNetwork, Offset: off, Len: n, Dst: 0},
		Lookup{Set: set, Src: 0, Invert: invert})
}

// byteAt compares one byte of the payload.
func (r *rb) byteAt(base Base, off uint32, op CmpOp, v byte) *rb {
	return r.add(fmt.Sprintf("@%s,%d,8 %s0x%x", base, off*8, opText(op), v),
		Payload{Base: base, Offset: off, Len: 1, Dst: 0},
		Cmp{Op: op, Src: 0, Data: []byte{v}})
}

func opText(op CmpOp) string {
	return [...]string{"", "!= ", "< ", "<= ", "> ", ">= "}[op]
}

func (r *rb) counter(name string) *rb {
	return r.add(fmt.Sprintf("counter name %q", name), Counter{Name: name})
}

func (r *rb) verdict(k VerdictKind, chain string) *rb {
	text := [...]string{"accept", "drop", "return", "jump " + chain, "goto " + chain}[k]
	return r.add(text, Verdict{Kind: k, Chain: chain})
}

// ctDNAT matches connections this box destination-NATed.
func (r *rb) ctDNAT() *rb {
	const ipsDstNAT = 1 << 5 // IPS_DST_NAT
	mask := binary.LittleEndian.AppendUint32(nil, ipsDstNAT)
	return r.add("ct status dnat",
		Ct{Key: CtStatus, Dst: 0},
		Bitwise{Src: 0, Dst: 0, Len: 4, Mask: mask, Xor: make([]byte, 4)},
		Cmp{Op: CmpNeq, Src: 0, Data: make([]byte, 4)})
}

// nameKey loads stage si of a name window (over transport t) into the
// registers, transformed with the matcher's mask and xor. For si > 0 the
// registers still hold the key of stage si-1 (a lookup does not change
// them), so it hashes that key into register 0 and loads the next chunk
// after it; not reloading earlier stages keeps a 5-stage rule under the
// kernel's 4 KiB rule size (EFBIG beyond). It returns the nft text of the
// key, which spells the earlier stages out again as nft would.
func (r *rb) nameKey(t transport, m matcher, si int) string {
	st := stagesFor(m.wireLen - 1)
	reg := 0
	if si > 0 {
		r.add("", Hash{Src: 0, Dst: 0, Len: m.keyLens[si-1], Modulus: hashModulus, Seed: m.seeds[si]})
		reg = 1
	}
	for _, p := range pieces(st[si]) {
		dst := Reg(reg)
		r.add("",
			Payload{Base: t.base, Offset: t.nameOff + m.off + uint32(p.off), Len: uint32(p.n), Dst: dst},
			Bitwise{Src: dst, Dst: dst, Len: uint32(p.n), Mask: slices.Clone(m.mask[p.off : p.off+p.n]), Xor: slices.Clone(m.xor[p.off : p.off+p.n])})
		reg += round4(p.n) / 4
	}
	return keyText(t, m, si)
}

// keyText is the nft text of stage si's key.
func keyText(t transport, m matcher, si int) string {
	st := stagesFor(m.wireLen - 1)
	var parts []string
	if si > 0 {
		parts = append(parts, fmt.Sprintf("jhash %s mod %d seed 0x%x", keyText(t, m, si-1), uint32(hashModulus), m.seeds[si]))
	}
	for _, p := range pieces(st[si]) {
		parts = append(parts, pieceText(t, stage{int(m.off) + p.off, p.n}, m.mask[p.off:p.off+p.n], m.xor[p.off:p.off+p.n]))
	}
	return strings.Join(parts, " . ")
}

func pieceText(t transport, p stage, mask, xor []byte) string {
	text := fmt.Sprintf("@%s,%d,%d", t.base, (t.nameOff+uint32(p.off))*8, p.n*8)
	if bytes.Count(xor, []byte{0}) == len(xor) {
		return text + fmt.Sprintf(" & 0x%x", mask)
	}
	return text + fmt.Sprintf(" | 0x%x", xor) // (b & ^0x20) ^ 0x20 == b | 0x20
}

// --- chains ---

func (c *compiler) addAddressSets() {
	var listen4, listen6, up4, up6 []Element
	var clients4, clients6 []Element
	var rr4, rr6 []Element
	seenUp := map[netip.Addr]bool{}
	for _, a := range sortedAddrs(c.s.Listen) {
		if family(a) == IPv4 {
			listen4 = append(listen4, Element{Key: a.Unmap().AsSlice()})
		} else {
			listen6 = append(listen6, Element{Key: a.AsSlice()})
		}
	}
	// Round robin in the order given: the operator's order is the map's.
	for _, u := range c.s.Upstreams {
		a := u.Addr().Unmap()
		data := append(a.AsSlice(), binary.BigEndian.AppendUint16(nil, u.Port())...)
		data = append(data, 0, 0) // the port register's padding
		if a.Is4() {
			rr4 = append(rr4, Element{Key: binary.LittleEndian.AppendUint32(nil, uint32(len(rr4))), Data: data})
		} else {
			rr6 = append(rr6, Element{Key: binary.LittleEndian.AppendUint32(nil, uint32(len(rr6))), Data: data})
		}
		if seenUp[a] {
			continue
		}
		seenUp[a] = true
	}
	for _, a := range sortedAddrs(keys(seenUp)) {
		if a.Is4() {
			up4 = append(up4, Element{Key: a.AsSlice()})
		} else {
			up6 = append(up6, Element{Key: a.AsSlice()})
		}
	}
	for _, p := range mergePrefixes(c.s.Clients) {
		e := prefixRange(p)
		if p.Addr().Is4() {
			clients4 = append(clients4, e)
		} else {
			clients6 = append(clients6, e)
		}
	}
	c.rs.Sets = append(c.rs.Sets,
		&Set{Name: "listen4", Comment: "addresses clients send DNS to", KeyType: TypeIPv4Addr, KeyLen: 4, Elements: listen4},
		&Set{Name: "listen6", Comment: "addresses clients send DNS to", KeyType: TypeIPv6Addr, KeyLen: 16, Elements: listen6},
		&Set{Name: "clients4", Comment: "client networks", KeyType: TypeIPv4Addr, KeyLen: 4, Interval: true, Elements: clients4},
		&Set{Name: "clients6", Comment: "client networks", KeyType: TypeIPv6Addr, KeyLen: 16, Interval: true, Elements: clients6},
		&Set{Name: "upstreams4", Comment: "upstream resolvers", KeyType: TypeIPv4Addr, KeyLen: 4, Elements: up4},
		&Set{Name: "upstreams6", Comment: "upstream resolvers", KeyType: TypeIPv6Addr, KeyLen: 16, Elements: up6},
		&Set{Name: "rr4", Comment: "round robin over the IPv4 upstreams", KeyType: TypeInteger, KeyLen: 4,
			DataType: TypeIPv4AddrPort, DataLen: 8, Elements: rr4,
			Decl: fmt.Sprintf("typeof numgen inc mod %d : ip daddr . th dport", max(1, len(rr4)))},
		&Set{Name: "rr6", Comment: "round robin over the IPv6 upstreams", KeyType: TypeInteger, KeyLen: 4,
			DataType: TypeIPv6AddrPort, DataLen: 20, Elements: rr6,
			Decl: fmt.Sprintf("typeof numgen inc mod %d : ip6 daddr . th dport", max(1, len(rr6)))},
	)
}

func keys(m map[netip.Addr]bool) []netip.Addr {
	out := make([]netip.Addr, 0, len(m))
	for a := range m {
		out = append(out, a)
	}
	return out
}

func sortedAddrs(in []netip.Addr) []netip.Addr {
	out := slices.Clone(in)
	slices.SortFunc(out, func(a, b netip.Addr) int { return a.Unmap().Compare(b.Unmap()) })
	return slices.Compact(out)
}

// mergePrefixes sorts prefixes and drops those inside another: the kernel
// refuses overlapping intervals.
func mergePrefixes(in []netip.Prefix) []netip.Prefix {
	ps := slices.Clone(in)
	for i, p := range ps {
		if p.Addr().Is4In6() {
			p = netip.PrefixFrom(p.Addr().Unmap(), max(0, p.Bits()-96))
		}
		ps[i] = p.Masked()
	}
	slices.SortFunc(ps, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	var out []netip.Prefix
	for _, p := range ps {
		if len(out) > 0 && out[len(out)-1].Contains(p.Addr()) && out[len(out)-1].Bits() <= p.Bits() {
			continue
		}
		out = append(out, p)
	}
	return out
}

// prefixRange is the half-open interval of a prefix; KeyEnd is nil when the
// range runs to the end of the address space.
func prefixRange(p netip.Prefix) Element {
	start := p.Masked().Addr().AsSlice()
	end := slices.Clone(start)
	hostBits := len(start)*8 - p.Bits()
	for i := len(end) - 1; i >= 0 && hostBits > 0; i-- {
		n := min(8, hostBits)
		end[i] |= byte(1<<n - 1)
		hostBits -= n
	}
	// increment to the first address after the range
	for i := len(end) - 1; i >= 0; i-- {
		end[i]++
		if end[i] != 0 {
			return Element{Key: start, KeyEnd: end}
		}
	}
	return Element{Key: start}
}

func (c *compiler) addTransportChains(t transport) {
	// One chain per wire length. Every length gets the high-bit check, so
	// a compression pointer cannot smuggle a listed name past the scan:
	// the first name in a message has nothing earlier to point to, and an
	// ordinary name has no byte >= 0x80, so any such byte is hostile (or
	// raw non-ASCII, which resolvers answer NXDOMAIN anyway). Listed
	// lengths then get their matchers.
	hasChain := map[int]bool{}
	for L := 2; L <= MaxWireLen; L++ {
		lc := &Chain{Name: fmt.Sprintf("%s-len-%d", t.name, L), Comment: fmt.Sprintf("question names of %d wire bytes", L)}
		for _, p := range pieces(stage{0, L - 1}) {
			mask := bytes.Repeat([]byte{0x80}, p.n)
			off := t.nameOff + uint32(p.off)
			lc.Rules = append(lc.Rules, newRule().
				add(fmt.Sprintf("@%s,%d,%d & 0x%x != 0x0", t.base, off*8, p.n*8, mask),
					Payload{Base: t.base, Offset: off, Len: uint32(p.n), Dst: 0},
					Bitwise{Src: 0, Dst: 0, Len: uint32(p.n), Mask: mask, Xor: make([]byte, p.n)},
					Cmp{Op: CmpNeq, Src: 0, Data: make([]byte, p.n)}).
				counter(CounterMalformed).verdict(Drop, "").rule())
		}
		lc.Rules = append(lc.Rules, c.layoutRules(t, L)...)
		for _, m := range c.match[L] {
			lc.Rules = append(lc.Rules, matchRule(t, m, Verdict{Kind: Goto, Chain: c.outcomeChain(t, 0)}))
		}
		lc.Rules = append(lc.Rules, c.suffixRules(t, L)...)
		hasChain[L] = true
		c.rs.Chains = append(c.rs.Chains, lc)
	}

	// The header gate, then the terminator scan: the first zero byte of an
	// ordinary name is its end, so the first position holding zero gives
	// the wire length, and only names of that length need a lookup.
	q := &Chain{Name: "query-" + t.name, Comment: "header gate and name-length dispatch"}
	q.Rules = append(q.Rules,
		newRule().add(fmt.Sprintf("@%s,%d,16 & 0xf800 != 0x0", t.base, t.flagsOff*8),
			Payload{Base: t.base, Offset: t.flagsOff, Len: 2, Dst: 0},
			Bitwise{Src: 0, Dst: 0, Len: 2, Mask: []byte{0xf8, 0x00}, Xor: []byte{0, 0}},
			Cmp{Op: CmpNeq, Src: 0, Data: []byte{0, 0}}).
			counter(CounterMalformed).verdict(Drop, "").rule(),
		newRule().add(fmt.Sprintf("@%s,%d,16 != 0x1", t.base, t.qdOff*8),
			Payload{Base: t.base, Offset: t.qdOff, Len: 2, Dst: 0},
			Cmp{Op: CmpNeq, Src: 0, Data: []byte{0, 1}}).
			counter(CounterMalformed).verdict(Drop, "").rule(),
	)
	// ANCOUNT, NSCOUNT, ARCOUNT read as one 48-bit number: above 1 means
	// records besides the question and at most one OPT. The name's end is
	// found from the name itself, so the check works on these too; they are
	// counted, and dropped with --strict.
	q.Rules = append(q.Rules, c.unusual(newRule().add(fmt.Sprintf("@%s,%d,48 > 0x1", t.base, (t.qdOff+2)*8),
		Payload{Base: t.base, Offset: t.qdOff + 2, Len: 6, Dst: 0},
		Cmp{Op: CmpGt, Src: 0, Data: []byte{0, 0, 0, 0, 0, 1}})))
	if t == tcp {
		q.Rules = append(q.Rules, c.tcpOneQueryRules()...)
	}
	for pos := 0; pos < MaxWireLen; pos++ {
		r := newRule().byteAt(t.base, t.nameOff+uint32(pos), CmpEq, 0)
		if hasChain[pos+1] {
			r.verdict(Goto, fmt.Sprintf("%s-len-%d", t.name, pos+1))
		} else {
			r.verdict(Return, "")
		}
		q.Rules = append(q.Rules, r.rule())
	}
	// No zero byte within 255 bytes (a name longer than DNS allows), or the
	// packet ended inside the name.
	q.Rules = append(q.Rules, newRule().counter(CounterMalformed).verdict(Drop, "").rule())
	c.rs.Chains = append(c.rs.Chains, q)

	// Per family: count, check, count what passed.
	for _, f := range []Family{IPv4, IPv6} {
		fc := &Chain{Name: fmt.Sprintf("%s%d", t.name, f), Comment: fmt.Sprintf("%s queries over IPv%d from client networks", strings.ToUpper(t.name), f)}
		if t == tcp {
			// Only segments that carry data hold a query; the handshake
			// and bare ACKs pass. @ih,0,8 only loads when there is data.
			hasData := func() *rb { return newRule().byteAt(BaseInner, 0, CmpGte, 0) }
			fc.Rules = append(fc.Rules,
				hasData().counter(CounterName(CounterChecked, familyName(f), t.name)).verdict(Jump, "query-"+t.name).rule(),
				hasData().counter(CounterName(CounterPassed, familyName(f), t.name)).rule())
		} else {
			fc.Rules = append(fc.Rules,
				newRule().counter(CounterName(CounterChecked, familyName(f), t.name)).verdict(Jump, "query-"+t.name).rule(),
				newRule().counter(CounterName(CounterPassed, familyName(f), t.name)).rule())
		}
		c.rs.Chains = append(c.rs.Chains, fc)
	}

	d := &Chain{Name: "dns-" + t.name, Comment: "who is asking: clients are checked, outsiders dropped"}
	d.Rules = append(d.Rules,
		newRule().nfproto(IPv4).addrInSet(IPv4, false, "clients4", false).verdict(Goto, t.name+"4").rule(),
		newRule().nfproto(IPv6).addrInSet(IPv6, false, "clients6", false).verdict(Goto, t.name+"6").rule(),
		newRule().nfproto(IPv4).addrInSet(IPv4, true, "listen4", false).counter(CounterOutsider).verdict(Drop, "").rule(),
		newRule().nfproto(IPv6).addrInSet(IPv6, true, "listen6", false).counter(CounterOutsider).verdict(Drop, "").rule(),
	)
	c.rs.Chains = append(c.rs.Chains, d)
}

// layoutRules check, for a name of L wire bytes, that the message is laid
// out the way an ordinary query is: with no additional record it ends right
// after the question (UDP length, or the TCP length prefix), and with one
// the record after the question is an OPT (root owner, type 41). A query
// failing them is counted as unusual_layout, and dropped with --strict.
// What they catch beyond odd clients: a zero byte inside a label ends the
// scan early, so the kernel matches a shorter name than the resolver sees;
// under a suffix entry that would pass a name it covers.
func (c *compiler) layoutRules(t transport, L int) []Rule {
	arOff := t.qdOff + 6
	end := t.nameOff + uint32(L) + 4  // first byte after QTYPE, QCLASS
	lenOff, lenWant := uint32(4), end // UDP: the length field counts the UDP header
	if t == tcp {
		lenOff, lenWant = 0, end-2 // TCP: the prefix counts the message
	}
	noAR := newRule().
		add(fmt.Sprintf("@%s,%d,16 0x0", t.base, arOff*8), Payload{Base: t.base, Offset: arOff, Len: 2, Dst: 0}, Cmp{Op: CmpEq, Src: 0, Data: []byte{0, 0}}).
		add(fmt.Sprintf("@%s,%d,16 != %d", t.base, lenOff*8, lenWant), Payload{Base: t.base, Offset: lenOff, Len: 2, Dst: 0},
			Cmp{Op: CmpNeq, Src: 0, Data: binary.BigEndian.AppendUint16(nil, uint16(lenWant))})
	opt := newRule().
		add(fmt.Sprintf("@%s,%d,16 0x1", t.base, arOff*8), Payload{Base: t.base, Offset: arOff, Len: 2, Dst: 0}, Cmp{Op: CmpEq, Src: 0, Data: []byte{0, 1}}).
		add(fmt.Sprintf("@%s,%d,24 != 0x29", t.base, end*8), Payload{Base: t.base, Offset: end, Len: 3, Dst: 0},
			Cmp{Op: CmpNeq, Src: 0, Data: []byte{0, 0, 0x29}})
	return []Rule{c.unusual(noAR), c.unusual(opt)}
}

// matchRule is the rule that looks a name (or a suffix window) up through
// m's stages and, on a match, ends with v (verdict maps end with their
// element's verdict).
func matchRule(t transport, m matcher, v Verdict) Rule {
	r := newRule()
	var text []string
	for si := range m.sets {
		key := r.nameKey(t, m, si)
		if m.vmap && si == len(m.sets)-1 {
			r.add("", Lookup{Set: m.sets[si], Src: 0, IsMap: true})
			text = append(text, fmt.Sprintf("%s vmap @%s", key, m.sets[si]))
			continue
		}
		r.add("", Lookup{Set: m.sets[si], Src: 0})
		text = append(text, fmt.Sprintf("%s @%s", key, m.sets[si]))
	}
	r.text = append(r.text, text...)
	if !m.vmap {
		r.verdict(v.Kind, v.Chain)
	}
	return r.rule()
}

func (c *compiler) addBaseChains() {
	raw := &Chain{Name: chainPreroutingRaw, Hook: HookPrerouting, Type: ChainFilter, Priority: -300,
		Comment: "before conntrack: blocked queries never create conntrack entries"}
	raw.Rules = append(raw.Rules, c.dotRules()...)
	for _, t := range []transport{udp, tcp} {
		raw.Rules = append(raw.Rules, newRule().l4proto(t).dport(DNSPort).verdict(Jump, "dns-"+t.name).rule())
	}

	nat := &Chain{Name: chainNATPrerouting, Hook: HookPrerouting, Type: ChainNAT, Priority: -100,
		Comment: "round robin: each new flow picks the next upstream"}
	post := &Chain{Name: chainNATPost, Hook: HookPostrouting, Type: ChainNAT, Priority: 100,
		Comment: "replies must come back through the box"}
	fwd := &Chain{Name: chainForward, Hook: HookForward, Type: ChainFilter, Priority: 0,
		Comment: "clients get DNS through the box and nothing else"}
	for _, f := range []Family{IPv4, IPv6} {
		rr := "rr4"
		if f == IPv6 {
			rr = "rr6"
		}
		n := len(c.rs.Set(rr).Elements)
		sfx := map[Family]string{IPv4: "4", IPv6: "6"}[f]
		hasListen := len(c.rs.Set("listen"+sfx).Elements) > 0
		if n > 0 && hasListen {
			kw := map[Family]string{IPv4: "ip", IPv6: "ip6"}[f]
			portReg := Reg(1)
			if f == IPv6 {
				portReg = 4
			}
			for _, t := range []transport{udp, tcp} {
				nat.Rules = append(nat.Rules, newRule().nfproto(f).
					addrInSet(f, false, "clients"+sfx, false).addrInSet(f, true, "listen"+sfx, false).
					l4proto(t).dport(DNSPort).
					add(fmt.Sprintf("dnat %s to numgen inc mod %d map @%s", kw, n, rr),
						Numgen{Dst: 0, Modulus: uint32(n)},
						Lookup{Set: rr, Src: 0, Dst: 0, IsMap: true},
						NAT{Kind: DNAT, Family: f, Addr: 0, Proto: portReg, HasProto: true}).rule())
			}
		}
		icpt := c.interceptRules(f, n, rr)
		nat.Rules = append(nat.Rules, icpt...)
		if n > 0 && (hasListen || len(icpt) > 0) {
			post.Rules = append(post.Rules, newRule().nfproto(f).
				addrInSet(f, false, "clients"+sfx, false).addrInSet(f, true, "upstreams"+sfx, false).
				ctDNAT().add("masquerade", Masquerade{}).rule())
		}
		fwd.Rules = append(fwd.Rules,
			newRule().nfproto(f).addrInSet(f, false, "clients"+sfx, false).ctDNAT().
				addrInSet(f, true, "upstreams"+sfx, false).verdict(Accept, "").rule(),
			newRule().nfproto(f).addrInSet(f, false, "clients"+sfx, false).
				counter(CounterForwardDropped).verdict(Drop, "").rule())
	}
	c.rs.Chains = append(c.rs.Chains, raw, nat, post, fwd)
}
