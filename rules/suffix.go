package rules

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
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
// The price is one lookup per distinct suffix length shorter than the
// name, in each length chain: see README "Suffix entries" for the measured
// cost and why the single-lookup designs were not used.
//
// Precedence, the same as Check: an exception (allow) beats every block;
// among blocks, the most specific entry decides. The compiler applies it
// ahead of time, so the kernel only needs "exceptions first, then blocks":
//   - a block suffix under (or equal to) an allowed suffix is dropped;
//   - a block suffix or exact name under a broader block suffix is dropped
//     as redundant (counted in Stats.Redundant);
//   - an exact name that is allowed is dropped;
//   - an exception is kept only where a block suffix covers it.
// ||d^ is d as an exact name plus *.d.

// suffixPlan is what the compiler keeps of the suffix entries: per wire
// length s, the matchers of block suffixes and exceptions, and per name
// length the matchers of allowed exact names.
type suffixPlan struct {
	block, allow map[int]matcher // by suffix wire length
	allowExact   map[int]matcher // by name wire length
	blockLens    []int           // descending
	allowLens    []int           // descending
}

// resolveSuffixes applies the precedence to the lists' entries, prepares the
// suffix matchers and returns the lists whose Names are the exact block
// names left to match. Lists without entries come back as they are.
func (c *compiler) resolveSuffixes(lists []*List) []*List {
	blockBelow := map[string]bool{}
	allowBelow := map[string]bool{}
	allowExact := map[string]bool{}
	apex := map[string]bool{} // exact block names from ||d^
	entries := false
	for _, l := range lists {
		if l.Allow {
			for n := range l.Names {
				allowExact[n] = true
				entries = true
			}
		}
		for _, e := range l.Entries {
			entries = true
			allow := e.Allow || l.Allow
			switch {
			case allow && e.Match == MatchExact:
				allowExact[e.Name] = true
			case allow:
				allowBelow[e.Name] = true
				if e.Match == MatchTree {
					allowExact[e.Name] = true
				}
			case e.Match == MatchExact:
				apex[e.Name] = true
			default:
				blockBelow[e.Name] = true
				if e.Match == MatchTree {
					apex[e.Name] = true
				}
			}
		}
	}
	if !entries {
		return lists
	}
	allowed := func(n string) bool { return allowExact[n] || underAny(n, allowBelow) }

	effBelow := map[string]bool{}
	for d := range blockBelow {
		switch {
		case allowBelow[d] || underAny(d, allowBelow):
		case underAny(d, blockBelow):
			c.rs.Stats.Redundant++
		default:
			effBelow[d] = true
		}
	}
	exact := &List{Path: "(exact names)", Names: map[string]int{}}
	addExact := func(n string) {
		switch {
		case allowed(n):
		case underAny(n, blockBelow):
			c.rs.Stats.Redundant++
		default:
			exact.Names[n] = 0
		}
	}
	for _, l := range lists {
		if l.Allow {
			continue
		}
		for n := range l.Names {
			addExact(n)
		}
	}
	for n := range apex {
		if _, dup := exact.Names[n]; !dup {
			addExact(n)
		}
	}
	var effAllowBelow, effAllowExact []string
	for a := range allowBelow {
		if underAny(a, effBelow) {
			effAllowBelow = append(effAllowBelow, a)
		}
	}
	for n := range allowExact {
		if underAny(n, effBelow) {
			effAllowExact = append(effAllowExact, n)
		}
	}
	c.rs.Stats.Suffixes = len(effBelow)
	c.rs.Stats.Exceptions = len(effAllowBelow) + len(effAllowExact)

	p := &suffixPlan{block: map[int]matcher{}, allow: map[int]matcher{}, allowExact: map[int]matcher{}}
	blockNames := make([]string, 0, len(effBelow))
	for d := range effBelow {
		blockNames = append(blockNames, d)
	}
	p.blockLens = c.addSuffixMatchers("sub", blockNames, p.block)
	p.allowLens = c.addSuffixMatchers("allow-sub", effAllowBelow, p.allow)
	exactGroups := byWireLen(effAllowExact)
	for _, L := range sortedLens(exactGroups) {
		names := exactGroups[L]
		k := L - 1
		w := make([][]byte, len(names))
		for i, n := range names {
			w[i] = Wire(n)[:k]
		}
		p.allowExact[L] = c.addMatcher(fmt.Sprintf("allow-%d", L), L, bytes.Repeat([]byte{foldMask}, k), bytes.Repeat([]byte{foldXor}, k), w, nil)
	}
	c.suffix = p
	return []*List{exact}
}

// addSuffixMatchers makes one matcher per suffix wire length s for names,
// keyed on the suffix's s-1 bytes with the first (its first length byte)
// exact and the rest folded, and returns the lengths, longest first.
func (c *compiler) addSuffixMatchers(prefix string, names []string, into map[int]matcher) []int {
	groups := byWireLen(names)
	lens := sortedLens(groups)
	for _, s := range lens {
		group := groups[s]
		k := s - 1
		w := make([][]byte, len(group))
		for i, n := range group {
			w[i] = Wire(n)[:k]
		}
		mask := bytes.Repeat([]byte{foldMask}, k)
		xor := bytes.Repeat([]byte{foldXor}, k)
		mask[0], xor[0] = 0xff, 0
		into[s] = c.addMatcher(fmt.Sprintf("%s-%d", prefix, s), s, mask, xor, w, nil)
	}
	slices.Reverse(lens)
	return lens
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

// suffixRules are the rules of the chain for names of L wire bytes that
// match suffix windows: exceptions first (they return, so the query goes
// on to be forwarded), then block suffixes, longest first.
func (c *compiler) suffixRules(t transport, L int, blocked string) []Rule {
	p := c.suffix
	if p == nil {
		return nil
	}
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
			out = append(out, matchRule(t, window(p.block[s], s), Verdict{Kind: Goto, Chain: blocked}))
		}
	}
	return out
}

// underAny reports whether some proper parent domain of n (a suffix of it
// at a label boundary) is in set.
func underAny(n string, set map[string]bool) bool {
	if len(set) == 0 {
		return false
	}
	for i := strings.IndexByte(n, '.'); i >= 0; {
		n = n[i+1:]
		if set[n] {
			return true
		}
		i = strings.IndexByte(n, '.')
	}
	return false
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
