package rules

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
)

// Suffix entries (*.d, ||d^) and exceptions.
//
// In the chain for question names of L wire bytes the end of the name is
// known (the terminator scan found it), so the last s bytes of the name sit
// at a fixed offset, L - s, whatever the EDNS layout of the query.
//
// One rule per length chain builds a key from the last 64 bytes of the
// name, reversed (8-byte loads, each reversed by a byteorder expression)
// and folded with | 0x20, and looks it up in one interval map, "suffixes".
// A suffix reversed is a prefix of the keys of the names under it, so each
// entry is one range of keys; nested ranges are flattened at compile time
// into segments, each carrying what the innermost entry decides (its
// outcome), what the entries around it decide (the fallback), and the
// innermost entry's wire length s. A name under no suffix misses and goes
// on after this one lookup, whatever the list holds.
//
// The fold cannot tell a length byte from a hyphen or digit (bit 5), so a
// hit is not yet a match: x0googletagmanager.com falls in the range of
// googletagmanager.com, whose first length byte 16 folds onto '0'. The
// matched suffix starts at offset L - s, and the byte there must be a real
// label boundary, not '-' or a digit. The kernel refuses a rule that reads a
// register it did not write, so the data cannot travel to another rule;
// instead the same rule looks (s, outcome, fallback, L) up in a verdict
// map, "suffix-dispatch", whose verdict jumps to the chain for boundary
// offset p = L - s and that outcome and fallback, sfx-p-o-f: it checks the
// byte at p and ends with the outcome, or with the fallback if the byte is
// a hyphen or a digit. A hit costs two lookups and two compares.
//
// Precedence, the same as Check: an exception (allow) beats every block;
// among blocks, the most specific entry decides. Resolve folds the lists
// ahead of time (allowed and redundant entries go, see Resolved); the
// segments encode the rest. ||d^ is compiled as the exact name d plus *.d.

// suffixPlan is what the compiler keeps of the suffix entries.
type suffixPlan struct {
	filter   string // the interval map of reversed suffixes ("" if none are short)
	dispatch string // the verdict map to the boundary chains
	// Suffixes longer than the key: the set of their last 64 bytes, the
	// jhash seed (injective over those), and the second interval map.
	tails, long string
	tailSeed    uint32
	longMin     int // the long rule goes in the chains for names longer than this
}

// suffixOutcome encodes a decision in the map data: 0 lets the query go
// on, i+1 goes to list i's outcome chain.
type suffixOutcome = uint8

// resolveSuffixes folds the lists with Resolve (the precedence Check
// applies), adds the suffix map, the dispatch map and the boundary chains,
// and returns, index for index, lists whose Names are the exact block names
// left to match: a list's own exact names that still decide something, and
// the names of its ||d^ entries. Lists without entries or allowlists come
// back as they are.
func (c *compiler) resolveSuffixes(lists []*List) []*List {
	entries := false
	for _, l := range lists {
		entries = entries || len(l.Entries) > 0 || l.Allow
	}
	if !entries {
		return lists
	}
	res := Resolve(lists)
	c.rs.Stats.Resolve = res.Stats
	out := make([]*List, len(lists))
	for i, l := range lists {
		out[i] = &List{Path: l.Path, Names: map[string]int{}, Action: l.Action}
	}
	for _, r := range res.Exact {
		out[r.List].Names[r.Name] = r.Line
	}
	exact := func(n string) bool {
		for _, l := range out {
			if _, ok := l.Names[n]; ok {
				return true
			}
		}
		return false
	}
	var spans []suffixSpan
	for _, r := range res.Block {
		if r.Match == MatchTree && !exact(r.Name) {
			out[r.List].Names[r.Name] = r.Line
		}
		if suffixResidual(Wire(r.Name)) {
			c.rs.Stats.SuffixResidual++
		}
		spans = append(spans, belowSpan(r.Name, suffixOutcome(r.List+1)))
	}
	for _, r := range res.Allow {
		if r.Match != MatchBelow {
			if sp, ok := pointSpan(r.Name); ok {
				spans = append(spans, sp)
			}
		}
		if r.Match != MatchExact {
			spans = append(spans, belowSpan(r.Name, 0))
		}
	}
	c.rs.Stats.Suffixes = len(res.Block)
	c.rs.Stats.Exceptions = len(res.Allow)
	if len(res.Block) == 0 {
		return out
	}
	c.suffix = &suffixPlan{dispatch: "suffix-dispatch"}
	c.addSuffixSets(spans)
	return out
}

// shortParents is the decision of the suffix entries shorter than the key
// (spans with s < 64) that strictly enclose name n, as the base of a long
// entry's stack: whether one is an exception, else the most specific
// block's outcome (0 if none).
func shortParents(n string, byName map[string][]suffixSpan) (allow bool, out suffixOutcome) {
	for {
		i := strings.IndexByte(n, '.')
		if i < 0 {
			return allow, out
		}
		n = n[i+1:]
		for _, sp := range byName[n] {
			if sp.allow {
				allow = true
			} else if out == 0 {
				out = sp.out
			}
		}
	}
}

// suffixSpan is one entry's range of filter keys.
type suffixSpan struct {
	name   string
	lo, hi []byte
	s      int  // wire length of the entry
	allow  bool // an exception
	out    suffixOutcome
	// noCheck: the boundary byte cannot be checked (an exact name's key
	// starts at the name; a first length byte of 45 or 48-57 is also '-'
	// or a digit), so a hit decides as is.
	noCheck bool
	// The decision of the short entries around a long one (longSpan).
	baseAllow bool
	baseOut   suffixOutcome
}

// belowSpan is the range of the names under d: keys that start with d's
// reversed bytes and have a byte after them (d itself is followed by
// padding). A suffix of 64 bytes or more is cut to its last 64: its range
// is the one key.
func belowSpan(d string, out suffixOutcome) suffixSpan {
	w := Wire(d)
	lo := reversedKey(w)
	hi := slices.Clone(lo)
	if len(w) < filterKeyLen {
		incPrefix(hi[:len(w)])
		lo[len(w)] = 1
	} else {
		incPrefix(hi)
	}
	b := w[0]
	return suffixSpan{name: d, lo: lo, hi: hi, s: len(w), allow: out == 0, out: out, noCheck: b == '-' || b >= '0' && b <= '9'}
}

// maxLongSuffix is the longest suffix a long span holds exactly: the 64
// bytes of the first key and 60 of the second.
const maxLongSuffix = filterKeyLen + filterKeyLen - 4

// longSpan is a long suffix's range in the second map: the jhash of its
// last 64 bytes (its tail), then the bytes before them reversed and folded,
// then a byte after them (a name under it). A suffix longer than
// maxLongSuffix is cut to its last maxLongSuffix bytes (its start is then
// not checked).
func longSpan(sp suffixSpan, seed uint32) suffixSpan {
	w := Wire(sp.name)
	if len(w) > maxLongSuffix {
		w = w[len(w)-maxLongSuffix:]
		sp.noCheck = true
	}
	head := w[:len(w)-filterKeyLen]
	key := make([]byte, filterKeyLen)
	binary.LittleEndian.PutUint32(key, nftHash(reversedKey(Wire(sp.name)), seed, hashModulus))
	for j := range head {
		key[4+j] = foldByte(head[len(head)-1-j])
	}
	n := 4 + len(head)
	hi := slices.Clone(key)
	incPrefix(hi[:n])
	if n < filterKeyLen {
		key[n] = 1
	}
	sp.lo, sp.hi, sp.s = key, hi, len(w)
	return sp
}

// pointSpan is the one key of the name d itself (an allowed exact name
// inside a block suffix); names of 64 bytes or more have no key of their
// own.
func pointSpan(d string) (suffixSpan, bool) {
	w := Wire(d)
	if len(w) >= filterKeyLen {
		return suffixSpan{}, false
	}
	lo := reversedKey(w)
	hi := slices.Clone(lo)
	incPrefix(hi)
	return suffixSpan{name: d, lo: lo, hi: hi, s: len(w), allow: true, noCheck: true}, true
}

// segment is a piece of key space with one decision.
type segment struct {
	lo, hi []byte
	data   [3]byte // s, outcome, fallback
}

// addSuffixSets flattens the spans (nested or disjoint: they are prefix
// ranges) into segments and adds the filter map, the dispatch map and the
// boundary chains.
func flatten(spans []suffixSpan) []segment {
	slices.SortStableFunc(spans, func(a, b suffixSpan) int {
		if d := bytes.Compare(a.lo, b.lo); d != 0 {
			return d
		}
		return bytes.Compare(b.hi, a.hi) // the outer first
	})
	var segs []segment
	// decide is what the entries of stack decide for a name under all of
	// them: an exception anywhere (or among the short entries around a long
	// stack) lets it go on; else the innermost block; else the short
	// entries' block.
	decide := func(stack []suffixSpan, base suffixSpan) suffixOutcome {
		if base.baseAllow {
			return 0
		}
		for _, sp := range stack {
			if sp.allow {
				return 0
			}
		}
		if len(stack) == 0 {
			return base.baseOut
		}
		return stack[len(stack)-1].out
	}
	emit := func(lo, hi []byte, stack []suffixSpan) {
		if len(stack) == 0 || bytes.Compare(lo, hi) >= 0 {
			return
		}
		inner := stack[len(stack)-1]
		o := decide(stack, stack[0])
		f := decide(stack[:len(stack)-1], stack[0])
		if o == 0 && f == 0 {
			return
		}
		d := [3]byte{byte(inner.s), o, f}
		if o == f || inner.noCheck {
			d[0] = 0 // nothing to check, or nothing that can be: the outcome holds
		}
		if n := len(segs); n > 0 && segs[n-1].data == d && bytes.Equal(segs[n-1].hi, lo) {
			segs[n-1].hi = hi
			return
		}
		segs = append(segs, segment{lo: lo, hi: hi, data: d})
	}
	var stack []suffixSpan
	var cur []byte
	for _, sp := range spans {
		for len(stack) > 0 && bytes.Compare(stack[len(stack)-1].hi, sp.lo) <= 0 {
			top := stack[len(stack)-1]
			emit(cur, top.hi, stack)
			cur = top.hi
			stack = stack[:len(stack)-1]
		}
		if cur != nil {
			emit(cur, sp.lo, stack)
		}
		cur = sp.lo
		stack = append(stack, sp)
	}
	for len(stack) > 0 {
		top := stack[len(stack)-1]
		emit(cur, top.hi, stack)
		cur = top.hi
		stack = stack[:len(stack)-1]
	}
	return segs
}

func (c *compiler) addSuffixSets(spans []suffixSpan) {
	var short, long []suffixSpan
	byName := map[string][]suffixSpan{}
	for _, sp := range spans {
		if sp.s < filterKeyLen {
			short = append(short, sp)
			byName[sp.name] = append(byName[sp.name], sp)
		} else {
			long = append(long, sp)
		}
	}
	p := c.suffix
	type combo struct{ s, o, f byte }
	combos := map[combo]bool{}
	addMap := func(name, comment string, segs []segment) {
		m := &Set{Name: name, Comment: comment, KeyType: TypeInteger, KeyLen: filterKeyLen, DataType: TypeInteger, DataLen: 12, Interval: true}
		for _, sg := range segs {
			m.Elements = append(m.Elements, Element{Key: sg.lo, KeyEnd: sg.hi, Data: []byte{sg.data[0], 0, 0, 0, sg.data[1], 0, 0, 0, sg.data[2], 0, 0, 0}})
			combos[combo{sg.data[0], sg.data[1], sg.data[2]}] = true
		}
		c.rs.Sets = append(c.rs.Sets, m)
	}
	if segs := flatten(short); len(segs) > 0 {
		p.filter = "suffixes"
		addMap(p.filter, "suffixes: the last 64 name bytes reversed and folded -> length, outcome, fallback", segs)
	}
	if len(long) > 0 {
		tails := map[string][]byte{}
		for _, sp := range long {
			t := reversedKey(Wire(sp.name))
			tails[string(t)] = t
		}
		tailKeys := make([][]byte, 0, len(tails))
		for _, t := range tails {
			tailKeys = append(tailKeys, t)
		}
		tailKeys = uniqueSorted(tailKeys)
		p.tails, p.long, p.longMin = "suffix-tails", "suffixes-long", MaxWireLen
		p.tailSeed = injectiveSeed(tailKeys)
		ts := &Set{Name: p.tails, Comment: "the last 64 bytes, reversed and folded, of suffixes longer than that", KeyType: TypeInteger, KeyLen: filterKeyLen}
		for _, t := range tailKeys {
			ts.Elements = append(ts.Elements, Element{Key: t})
		}
		c.rs.Sets = append(c.rs.Sets, ts)
		ls := make([]suffixSpan, len(long))
		for i, sp := range long {
			sp.baseAllow, sp.baseOut = shortParents(sp.name, byName)
			ls[i] = longSpan(sp, p.tailSeed)
			p.longMin = min(p.longMin, ls[i].s-1)
		}
		addMap(p.long, "long suffixes: jhash of the tail . the bytes before it reversed and folded -> length, outcome, fallback", flatten(ls))
	}
	if len(combos) == 0 {
		c.suffix = nil
		return
	}

	// The dispatch map: (s, outcome, fallback, L) -> the boundary chain
	// for offset L - s, or straight to the outcome when there is nothing
	// to check (s = 0).
	dispatch := &Set{Name: c.suffix.dispatch, Comment: "suffix length, outcome, fallback, name length -> boundary check",
		KeyType: TypeInteger, KeyLen: 16, DataType: TypeVerdict}
	keys := make([]combo, 0, len(combos))
	for k := range combos {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b combo) int {
		return bytes.Compare([]byte{a.s, a.o, a.f}, []byte{b.s, b.o, b.f})
	})
	chains := map[string]bool{}
	for _, k := range keys {
		for L := max(2, int(k.s)); L <= MaxWireLen; L++ {
			var v Verdict
			switch {
			case k.s == 0:
				v = c.suffixVerdict(udp, k.o)
			case L == int(k.s) && k.o != 0:
				continue // a block entry's own name is not under it
			default:
				name := c.boundaryChain(L-int(k.s), k.o, k.f, chains)
				v = Verdict{Kind: Goto, Chain: name}
			}
			if v.Kind == Return {
				continue // a miss goes on too
			}
			vv := v
			dispatch.Elements = append(dispatch.Elements, Element{Key: []byte{k.s, 0, 0, 0, k.o, 0, 0, 0, k.f, 0, 0, 0, byte(L), 0, 0, 0}, Verdict: &vv})
		}
	}
	slices.SortFunc(dispatch.Elements, func(a, b Element) int { return bytes.Compare(a.Key, b.Key) })
	c.rs.Sets = append(c.rs.Sets, dispatch)
}

// suffixVerdict is where a decision goes: on (0) or to list i's outcome
// chain (i+1). The outcome chains serve both transports.
func (c *compiler) suffixVerdict(t transport, o suffixOutcome) Verdict {
	if o == 0 {
		return Verdict{Kind: Return}
	}
	return Verdict{Kind: Goto, Chain: c.outcomeChain(t, int(o)-1)}
}

// boundaryChain returns the chain that checks the byte at name offset p
// (the first byte of the matched suffix) and ends with outcome o when it
// starts a label, with fallback f when it is a hyphen or a digit (then the
// suffix's bytes are there, but not at a label boundary). It is created
// once, in c.suffix chains.
func (c *compiler) boundaryChain(p int, o, f suffixOutcome, made map[string]bool) string {
	name := fmt.Sprintf("sfx-%d-%d-%d", p, o, f)
	if made[name] {
		return name
	}
	made[name] = true
	ch := &Chain{Name: name, Comment: fmt.Sprintf("a suffix from name byte %d: a label boundary, not '-' or a digit", p)}
	for _, t := range []transport{udp, tcp} {
		off := t.nameOff + uint32(p)
		fb := c.suffixVerdict(t, f)
		ch.Rules = append(ch.Rules,
			newRule().l4proto(t).byteAt(t.base, off, CmpEq, '-').verdict(fb.Kind, fb.Chain).rule(),
			newRule().l4proto(t).add(fmt.Sprintf("@%s,%d,8 0x30-0x39", t.base, off*8),
				Payload{Base: t.base, Offset: off, Len: 1, Dst: 0},
				Cmp{Op: CmpGte, Src: 0, Data: []byte{'0'}}, Cmp{Op: CmpLte, Src: 0, Data: []byte{'9'}}).
				verdict(fb.Kind, fb.Chain).rule())
		ov := c.suffixVerdict(t, o)
		ch.Rules = append(ch.Rules, newRule().l4proto(t).verdict(ov.Kind, ov.Chain).rule())
	}
	c.suffixChains = append(c.suffixChains, ch)
	return name
}

// filterKeyLen is the length of the filter's key: the last 64 bytes of the
// name, reversed.
const filterKeyLen = 64

// reversedKey is the filter key of a suffix (wire form, final zero
// included): its bytes from the last to the first, every byte but the final
// zero folded, zero-padded. Suffixes longer than the key are cut to their
// last 64 bytes.
func reversedKey(wire []byte) []byte {
	k := make([]byte, filterKeyLen)
	for j := 0; j < len(wire) && j < filterKeyLen; j++ {
		b := wire[len(wire)-1-j]
		if j > 0 {
			b = foldByte(b)
		}
		k[j] = b
	}
	return k
}

// incPrefix adds one to b read as a big-endian number. A suffix key starts
// with its zero byte, so it never overflows.
func incPrefix(b []byte) {
	for i := len(b) - 1; i >= 0; i-- {
		b[i]++
		if b[i] != 0 {
			return
		}
	}
}

// reversedKeyExprs adds to r the expressions that write n key bytes to
// registers from reg on: key byte j is name byte L-1-skip-j, folded (the
// name's final zero, key byte 0 when skip is 0, is not), or zero before the
// name's start. Each 8-byte chunk (4 for a last odd word) is loaded and
// reversed by a byteorder expression; a chunk that starts before the name
// loads header bytes, masked off after.
func reversedKeyExprs(r *rb, t transport, L, skip int, reg Reg, n int) {
	for j := 0; j < n; {
		c := min(8, n-j)
		dst := reg + Reg(j/4)
		first := L - 1 - skip - j // name index of key byte j
		if first < 0 {
			r.add("", Immediate{Dst: dst, Data: make([]byte, c)})
		} else {
			off := int(t.nameOff) + first - c + 1
			r.add("", Payload{Base: t.base, Offset: uint32(off), Len: uint32(c), Dst: dst},
				Byteorder{Src: dst, Dst: dst, Len: uint32(c), Size: uint32(c)})
		}
		j += c
	}
	for j := 0; j < n; j += 16 {
		c := min(16, n-j)
		if L-1-skip-j < 0 {
			break // immediates' zeros from here on
		}
		mask, xor := make([]byte, c), make([]byte, c)
		for i := range c {
			switch idx := L - 1 - skip - j - i; {
			case idx < 0:
			case skip == 0 && j+i == 0:
				mask[i] = 0xff
			default:
				mask[i], xor[i] = foldMask, foldXor
			}
		}
		r.add("", Bitwise{Src: reg + Reg(j/4), Dst: reg + Reg(j/4), Len: uint32(c), Mask: mask, Xor: xor})
	}
}

// filterRule is the rule of the chain for names of L bytes that builds the
// reversed key, looks it up in the suffix map and, on a hit, dispatches on
// the segment's data and L.
func filterRule(t transport, L int, set, dispatch string) Rule {
	r := newRule()
	reversedKeyExprs(r, t, L, 0, 0, filterKeyLen)
	// nft has no syntax for the byte reversal: the text says what the
	// rule does, and nft -f refuses it rather than load something else.
	r.add(fmt.Sprintf("reversed(@%s,%d,%d) | 0x20 map @%s . %d vmap @%s", t.base, t.nameOff*8, L*8, set, L, dispatch),
		Lookup{Set: set, Src: 0, Dst: 0, IsMap: true},
		Immediate{Dst: 3, Data: []byte{byte(L), 0, 0, 0}},
		Lookup{Set: dispatch, Src: 0, IsMap: true})
	return r.rule()
}

// longRule is the rule, in the chains for names of more than 64 bytes, for
// suffixes longer than the 64-byte key: the last 64 bytes must be one of
// their tails (a set), whose jhash, followed by the 60 name bytes before
// them reversed and folded, is looked up in a second interval map; a hit
// dispatches like the short one.
func (p *suffixPlan) longRule(t transport, L int) Rule {
	r := newRule()
	reversedKeyExprs(r, t, L, 0, 0, filterKeyLen)
	r.add("", Lookup{Set: p.tails, Src: 0},
		Hash{Src: 0, Dst: 0, Len: filterKeyLen, Modulus: hashModulus, Seed: p.tailSeed})
	reversedKeyExprs(r, t, L, filterKeyLen, 1, filterKeyLen-4)
	r.add(fmt.Sprintf("reversed(@%s,%d,%d) | 0x20 @%s jhash . reversed(...) map @%s . %d vmap @%s",
		t.base, t.nameOff*8, L*8, p.tails, p.long, L, p.dispatch),
		Lookup{Set: p.long, Src: 0, Dst: 0, IsMap: true},
		Immediate{Dst: 3, Data: []byte{byte(L), 0, 0, 0}},
		Lookup{Set: p.dispatch, Src: 0, IsMap: true})
	return r.rule()
}

// suffixResidual reports whether a suffix (wire form) is one the kernel
// can over-match: its first length byte is also a hyphen or a digit (45,
// 48-57), so the boundary check cannot tell a name ending in the same bytes
// glued to that character; or its folded bytes have another ordinary parse
// (a fold twin), so the twin and the names under it match; or it is longer
// than maxLongSuffix, so only its last maxLongSuffix bytes are matched.
func suffixResidual(wire []byte) bool {
	b := wire[0]
	return b == '-' || b >= '0' && b <= '9' || len(wire) > maxLongSuffix || foldAmbiguous(wire[:len(wire)-1])
}

// SuffixNote says, for the decision of a suffix entry or exception
// (nftdns check), which queries the kernel's match covers, and where it
// matches more than the entry says (README: limits of suffix entries); ""
// for exact names.
func SuffixNote(d Decision) string {
	if d.Outcome == NotListed || d.Entry.Match == MatchExact {
		return ""
	}
	note := "matched in the kernel for every query layout (any EDNS options or extra records, UDP and TCP)"
	w := Wire(d.Entry.Name)
	switch b := w[0]; {
	case b == '-' || b >= '0' && b <= '9':
		note += "; also matches names that end in its bytes glued to a hyphen or digit (its first label has 45 or 48-57 characters)"
	case len(w) > maxLongSuffix:
		note += fmt.Sprintf("; matched on its last %d bytes only", maxLongSuffix)
	case foldAmbiguous(w[:len(w)-1]):
		note += "; also matches its fold twin and the names under it"
	}
	return note
}

// suffixRules are the rules the chain for names of L wire bytes gets for
// suffix entries: the one lookup rule.
func (c *compiler) suffixRules(t transport, L int) []Rule {
	p := c.suffix
	if p == nil {
		return nil
	}
	var out []Rule
	if p.long != "" && L > p.longMin {
		out = append(out, p.longRule(t, L)) // the more specific first
	}
	if p.filter != "" {
		out = append(out, filterRule(t, L, p.filter, p.dispatch))
	}
	return out
}
