package rules

import (
	"bytes"
	"fmt"
	"slices"
)

// Suffix entries (*.d, ||d^) and exceptions.
//
// In the chain for question names of L wire bytes the end of the name is
// known (the terminator scan found it), so the last s bytes of the name sit
// at a fixed offset, L - s, whatever the EDNS layout of the query. A suffix
// d of s wire bytes is matched by looking those s-1 bytes (its labels, not
// the final zero) up in the set of suffixes of that length. Its first byte
// is d's first length byte and is compared exactly, not folded: that is
// what anchors the match at a label boundary (notexample.com is not under
// example.com) and keeps x0googletagmanager.com apart from
// googletagmanager.com, whose length byte 16 folds onto the digit '0'. The
// other bytes are folded with | 0x20 like whole names.
//
// Those exact lookups cost one per distinct suffix length, so they sit
// behind a filter that costs one lookup whatever the lengths: the last 64
// bytes of the name, reversed (8-byte loads, each reversed by a byteorder
// expression) and folded, are looked up in one interval set holding, for
// every block suffix, the range of keys that start with the suffix
// reversed. A name under a listed suffix always falls in its range; a name
// outside every range cannot be under any, so it goes on after one lookup.
// Only names in a range (blocked ones, and near misses such as
// x0googletagmanager.com) walk the exact per-length lookups. The filter
// cannot decide alone: it folds the boundary byte, and it cannot carry the
// suffix length to another rule (the kernel refuses a rule that reads a
// register it did not write, so data cannot pass between rules).
//
// Precedence, the same as Check: an exception (allow) beats every block;
// among blocks, the most specific entry decides. Resolve folds the lists
// ahead of time (allowed and redundant entries go, see Resolved), so the
// kernel only needs: exact names first, then exceptions, then block
// suffixes longest first. ||d^ is d as an exact name plus *.d.

// suffixPlan is what the compiler keeps of the suffix entries: per wire
// length s, the matchers of block suffixes and exceptions, and per name
// length the matchers of allowed exact names.
type suffixPlan struct {
	filter       string          // the interval set of reversed block suffixes
	block, allow map[int]matcher // by suffix wire length
	allowExact   map[int]matcher // by name wire length
	blockLens    []int           // descending
	allowLens    []int           // descending
}

// resolveSuffixes folds the lists with Resolve (the precedence Check
// applies), prepares the suffix matchers and returns, index for index, lists
// whose Names are the exact block names left to match: a list's own exact
// names that still decide something, and the names of its ||d^ entries.
// Lists without entries or allowlists come back as they are.
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
	// With several lists a block suffix's window is a verdict map element
	// that goes to its list's outcome chain, as for exact names.
	var below, belowTo []string
	for _, r := range res.Block {
		below = append(below, r.Name)
		belowTo = append(belowTo, c.outcomeChain(udp, r.List))
		if r.Match == MatchTree && !exact(r.Name) {
			out[r.List].Names[r.Name] = r.Line
		}
	}
	var allowBelow, allowExact []string
	for _, r := range res.Allow {
		if r.Match != MatchBelow {
			allowExact = append(allowExact, r.Name)
		}
		if r.Match != MatchExact {
			allowBelow = append(allowBelow, r.Name)
		}
	}
	c.rs.Stats.Suffixes = len(below)
	c.rs.Stats.Exceptions = len(res.Allow)

	p := &suffixPlan{block: map[int]matcher{}, allow: map[int]matcher{}, allowExact: map[int]matcher{}}
	if len(lists) == 1 {
		belowTo = nil
	}
	for _, d := range below {
		if suffixResidual(Wire(d)) {
			c.rs.Stats.SuffixResidual++
		}
	}
	p.blockLens = c.addSuffixMatchers("sub", below, belowTo, p.block)
	p.allowLens = c.addSuffixMatchers("allow-sub", allowBelow, nil, p.allow)
	exactGroups := byWireLen(allowExact)
	for _, L := range sortedLens(exactGroups) {
		names := exactGroups[L]
		k := L - 1
		w := make([][]byte, len(names))
		for i, n := range names {
			w[i] = Wire(n)[:k]
		}
		p.allowExact[L] = c.addMatcher(fmt.Sprintf("allow-%d", L), L, bytes.Repeat([]byte{foldMask}, k), bytes.Repeat([]byte{foldXor}, k), w, nil)
	}
	if len(below) > 0 {
		p.filter = "suffixes"
		c.rs.Sets = append(c.rs.Sets, filterSet(p.filter, below))
	}
	c.suffix = p
	return out
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

// filterSet makes the interval set of the reversed suffixes: for a suffix
// of s bytes (s < 64), the keys that start with its s reversed bytes and
// have a non-zero byte after them (a name under it; the suffix itself is
// followed by padding); for longer suffixes, their cut key. Overlapping
// ranges are merged: the kernel refuses nested ones, and the set only says
// "maybe under some suffix".
func filterSet(name string, suffixes []string) *Set {
	type span struct{ lo, hi []byte }
	spans := make([]span, 0, len(suffixes))
	for _, d := range suffixes {
		w := Wire(d)
		lo := reversedKey(w)
		var hi []byte
		if s := len(w); s < filterKeyLen {
			hi = slices.Clone(lo)
			incPrefix(hi[:s])
			lo[s] = 1 // the smallest key with a byte after the suffix
		} else {
			hi = slices.Clone(lo)
			incPrefix(hi)
		}
		spans = append(spans, span{lo, hi})
	}
	slices.SortFunc(spans, func(a, b span) int { return bytes.Compare(a.lo, b.lo) })
	set := &Set{Name: name, Comment: "maybe under a block suffix: the last 64 name bytes reversed and folded",
		KeyType: TypeInteger, KeyLen: filterKeyLen, Interval: true}
	for _, sp := range spans {
		if n := len(set.Elements); n > 0 && bytes.Compare(sp.lo, set.Elements[n-1].KeyEnd) <= 0 {
			if bytes.Compare(sp.hi, set.Elements[n-1].KeyEnd) > 0 {
				set.Elements[n-1].KeyEnd = sp.hi
			}
			continue
		}
		set.Elements = append(set.Elements, Element{Key: sp.lo, KeyEnd: sp.hi})
	}
	return set
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

// filterRule is the rule of the chain for names of L bytes that builds the
// reversed key and, when it falls in a suffix range, goes to the chain
// with the exact lookups.
func filterRule(t transport, L int, set, chain string) Rule {
	r := newRule()
	for k := 0; k < filterKeyLen/8; k++ {
		dst := Reg(2 * k)
		if 8*k >= L {
			r.add("", Immediate{Dst: dst, Data: make([]byte, 8)})
			continue
		}
		// Key bytes 8k..8k+7 are name bytes L-1-8k down to L-8-8k; a chunk
		// that starts before the name loads header bytes, masked below.
		off := int(t.nameOff) + L - 8 - 8*k
		r.add("", Payload{Base: t.base, Offset: uint32(off), Len: 8, Dst: dst},
			Byteorder{Src: dst, Dst: dst, Len: 8, Size: 8})
	}
	for q := 0; q < filterKeyLen/16; q++ {
		if 16*q >= L {
			break // only immediates' zeros from here on
		}
		mask, xor := make([]byte, 16), make([]byte, 16)
		for i := range 16 {
			switch j := 16*q + i; {
			case j == 0:
				mask[i] = 0xff
			case j < L:
				mask[i], xor[i] = foldMask, foldXor
			}
		}
		r.add("", Bitwise{Src: Reg(4 * q), Dst: Reg(4 * q), Len: 16, Mask: mask, Xor: xor})
	}
	// nft has no syntax for the byte reversal: the text says what the
	// rule does, and nft -f refuses it rather than load something else.
	r.add(fmt.Sprintf("reversed(@%s,%d,%d) | 0x20 @%s", t.base, t.nameOff*8, L*8, set), Lookup{Set: set, Src: 0})
	return r.verdict(Goto, chain).rule()
}

// addSuffixMatchers makes one matcher per suffix wire length s for names,
// keyed on the suffix's s-1 bytes with the first (its first length byte)
// exact and the rest folded, and returns the lengths, longest first.
// With jumpTo (an outcome chain per name), the sets are verdict maps.
func (c *compiler) addSuffixMatchers(prefix string, names, jumpTo []string, into map[int]matcher) []int {
	to := map[string]string{}
	for i, n := range names {
		if jumpTo != nil {
			to[n] = jumpTo[i]
		}
	}
	groups := byWireLen(names)
	lens := sortedLens(groups)
	for _, s := range lens {
		group := groups[s]
		k := s - 1
		w := make([][]byte, len(group))
		var groupTo []string
		for i, n := range group {
			w[i] = Wire(n)[:k]
			if jumpTo != nil {
				groupTo = append(groupTo, to[n])
			}
		}
		mask := bytes.Repeat([]byte{foldMask}, k)
		xor := bytes.Repeat([]byte{foldXor}, k)
		mask[0], xor[0] = 0xff, 0
		into[s] = c.addMatcher(fmt.Sprintf("%s-%d", prefix, s), s, mask, xor, w, groupTo)
	}
	slices.Reverse(lens)
	return lens
}

// suffixResidual reports whether a suffix (wire form) is one the window
// lookup can over-match: its first length byte is also a hyphen or a digit
// (45, 48-57), so a name ending in the same bytes glued to that character
// matches; or its folded window has another ordinary parse (a fold twin),
// so the twin and the names under it match.
func suffixResidual(wire []byte) bool {
	b := wire[0]
	return b == '-' || b >= '0' && b <= '9' || foldAmbiguous(wire[:len(wire)-1])
}

// sortedLens are the keys of groups, ascending.
func sortedLens(groups map[int][]string) []int {
	lens := make([]int, 0, len(groups))
	for L := range groups {
		lens = append(lens, L)
	}
	slices.Sort(lens)
	return lens
}

// suffixRules are the rules the chain for names of L wire bytes gets for
// suffix entries: the filter, which goes to a chain of its own holding the
// exact lookups (see exactSuffixRules), created here.
func (c *compiler) suffixRules(t transport, L int) []Rule {
	p := c.suffix
	if p == nil || p.filter == "" {
		return nil
	}
	exact := c.exactSuffixRules(t, L)
	if len(exact) == 0 {
		return nil
	}
	name := fmt.Sprintf("%s-sfx-%d", t.name, L)
	c.rs.Chains = append(c.rs.Chains, &Chain{Name: name, Comment: fmt.Sprintf("names of %d bytes in a suffix range: exact lookups", L), Rules: exact})
	return []Rule{filterRule(t, L, p.filter, name)}
}

// exactSuffixRules look a name of L wire bytes up by its suffix windows:
// exceptions first (they return, so the query goes on to be forwarded),
// then block suffixes, longest first.
func (c *compiler) exactSuffixRules(t transport, L int) []Rule {
	p := c.suffix
	var out []Rule
	if m, ok := p.allowExact[L]; ok {
		out = append(out, matchRule(t, m, Verdict{Kind: Return}))
	}
	window := func(m matcher, s int) matcher {
		m.off = uint32(L - s)
		return m
	}
	for _, s := range p.allowLens {
		if s < L {
			out = append(out, matchRule(t, window(p.allow[s], s), Verdict{Kind: Return}))
		}
	}
	for _, s := range p.blockLens {
		if s < L {
			out = append(out, matchRule(t, window(p.block[s], s), Verdict{Kind: Goto, Chain: c.outcomeChain(t, 0)}))
		}
	}
	return out
}

// byWireLen groups names by wire length, each group sorted.
func byWireLen(names []string) map[int][]string {
	out := map[int][]string{}
	for _, n := range names {
		out[WireLen(n)] = append(out[WireLen(n)], n)
	}
	for _, g := range out {
		slices.Sort(g)
	}
	return out
}
