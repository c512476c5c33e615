package rules

import (
	"cmp"
	"slices"
	"strings"
)

// Ref is an entry of one of the lists given to Resolve.
type Ref struct {
	Entry
	List int // index in the lists
}

// Resolved is the smallest set of entries that decides every name exactly
// as Check does over the lists, for a compiler to put in the kernel:
//
//   - a name covered by any entry in Allow passes;
//   - else the most specific entry of Exact and Block decides: an Exact
//     name, then a MatchTree entry for the name itself, then the entry of
//     the longest parent name; its list's Action applies.
//
// It holds no two entries for the same name in Block, no entry in Block
// inside another with the same action (so nested entries in Block always
// differ in action, and the more specific one must win), no allow entry
// inside another, and no allow entry that does not cut into a Block entry.
type Resolved struct {
	Exact []Ref // exact block names (Match is MatchExact), sorted by name
	Block []Ref // suffix block entries (MatchBelow or MatchTree), sorted by name
	Allow []Ref // allow entries that cut into Block entries, sorted by name
	Stats ResolveStats
}

// ResolveStats counts the entries Resolve folded away.
type ResolveStats struct {
	ExactAllowed    int // exact block names an allow entry covers
	ExactRedundant  int // exact block names decided the same without them (a covering suffix entry with the same action, or the same name in an earlier list)
	BlockAllowed    int // suffix block entries an allow entry covers whole
	BlockRedundant  int // suffix block entries decided the same without them
	AllowRedundant  int // allow entries inside another allow entry
	AllowUnused     int // allow entries that cover no name a remaining block entry covers
	ExactFromSplits int // "||d^" entries split into the exact d and "*.d" (see Resolve)
}

// rankBefore orders entries for ties: the first list, then the first line.
func rankBefore(a, b Ref) bool {
	if a.List != b.List {
		return a.List < b.List
	}
	return a.Line < b.Line
}

// suffixSlot holds the one block suffix entry kept per name.
type suffixSlot struct {
	ref     Ref
	dropped bool
}

// Resolve folds the lists into a Resolved (see there). The steps:
//
//  1. Block suffix entries: of entries with the same name and match the
//     first (list, line) stays. When "*.d" and "||d^" both exist, "*.d"
//     goes if "||d^" ranks first or has the same action; else "||d^" is
//     split into an exact d (its action) and the "*.d" stays, so that Block
//     has one entry per name.
//  2. Allow entries: duplicates and entries inside another allow entry go.
//  3. A block suffix entry an allow entry covers whole goes; so does one
//     whose nearest enclosing block entry has the same action.
//  4. Exact block names: the first list's stays; a name an allow entry
//     covers goes; so does one whose most specific covering suffix entry
//     has the same action.
//  5. Allow entries that cover no name a remaining block entry covers go.
func Resolve(lists []*List) *Resolved {
	res := &Resolved{}
	st := &res.Stats

	// 1. Block suffix entries, one per name.
	below := map[string]Ref{}
	tree := map[string]Ref{}
	var allows []Ref
	exact := map[string]Ref{}
	addExact := func(r Ref) {
		if old, ok := exact[r.Name]; ok && rankBefore(old, r) {
			st.ExactRedundant++
			return
		} else if ok {
			st.ExactRedundant++
		}
		exact[r.Name] = r
	}
	for i, l := range lists {
		for n, line := range l.Names {
			r := Ref{Entry{Name: n, Match: MatchExact, Allow: l.Allow, Line: line, Text: n}, i}
			if l.Allow {
				allows = append(allows, r)
			} else {
				addExact(r)
			}
		}
		for _, e := range l.Entries {
			r := Ref{e, i}
			switch {
			case e.Allow:
				allows = append(allows, r)
			case e.Match == MatchExact:
				addExact(r)
			default:
				m := below
				if e.Match == MatchTree {
					m = tree
				}
				if old, ok := m[e.Name]; ok && rankBefore(old, r) {
					st.BlockRedundant++
					continue
				} else if ok {
					st.BlockRedundant++
				}
				m[e.Name] = r
			}
		}
	}
	action := func(r Ref) string { return lists[r.List].Action }
	slots := map[string]*suffixSlot{}
	for n, t := range tree {
		slots[n] = &suffixSlot{ref: t}
	}
	for n, b := range below {
		t, ok := tree[n]
		switch {
		case !ok:
			slots[n] = &suffixSlot{ref: b}
		case rankBefore(t, b) || action(t) == action(b):
			st.BlockRedundant++
		default:
			// "*.d" wins below d, "||d^" still decides d itself.
			st.ExactFromSplits++
			e := t
			e.Match = MatchExact
			if _, ok := exact[n]; !ok {
				exact[n] = e // else the exact name decides d already
			}
			slots[n] = &suffixSlot{ref: b}
		}
	}

	// 2. Allow entries: first of each (name, match), none inside another.
	allowBy := map[string][]Ref{} // name -> entries (at most one per match)
	slices.SortStableFunc(allows, func(a, b Ref) int {
		if rankBefore(a, b) {
			return -1
		}
		if rankBefore(b, a) {
			return 1
		}
		return 0
	})
	for _, a := range allows {
		dup := false
		for _, o := range allowBy[a.Name] {
			if o.Match == a.Match {
				dup = true
			}
		}
		if dup {
			st.AllowRedundant++
			continue
		}
		allowBy[a.Name] = append(allowBy[a.Name], a)
	}
	var allowKept []Ref
	for _, rs := range allowBy {
		for _, a := range rs {
			if allowInside(allowBy, a) {
				st.AllowRedundant++
				continue
			}
			allowKept = append(allowKept, a)
		}
	}
	allowed := func(n string) bool { return coveredBy(allowBy, n) }

	// 3. Block suffix entries: covered whole by an allow, or redundant
	// under their nearest enclosing block entry.
	for n, s := range slots {
		if wholeAllowed(allowBy, s.ref) {
			s.dropped = true
			st.BlockAllowed++
			continue
		}
		if p, ok := nearestAbove(slots, n); ok && action(p.ref) == action(s.ref) {
			s.dropped = true
			st.BlockRedundant++
		}
	}

	// 4. Exact block names.
	for n, r := range exact {
		if allowed(n) {
			st.ExactAllowed++
			continue
		}
		var dec *suffixSlot
		if s, ok := slots[n]; ok && s.ref.Match == MatchTree {
			dec = s
		} else if p, ok := nearestAbove(slots, n); ok {
			dec = p
		}
		if dec != nil && action(dec.ref) == action(r) {
			st.ExactRedundant++
			continue
		}
		res.Exact = append(res.Exact, r)
	}
	for _, s := range slots {
		if !s.dropped {
			res.Block = append(res.Block, s.ref)
		}
	}

	// 5. Allow entries that cut into a remaining block entry.
	kept := map[string]*suffixSlot{}
	for n, s := range slots {
		if !s.dropped {
			kept[n] = s
		}
	}
	for _, a := range allowKept {
		if cutsInto(kept, a) {
			res.Allow = append(res.Allow, a)
		} else {
			st.AllowUnused++
		}
	}
	byName := func(a, b Ref) int { return cmp.Compare(a.Name, b.Name) }
	slices.SortFunc(res.Exact, byName)
	slices.SortFunc(res.Block, byName)
	slices.SortFunc(res.Allow, func(a, b Ref) int {
		return cmp.Or(cmp.Compare(a.Name, b.Name), cmp.Compare(a.Match, b.Match))
	})
	return res
}

// parents calls f for each strict parent of n, the longest first, until f
// returns false.
func parents(n string, f func(p string) bool) {
	for {
		_, rest, ok := strings.Cut(n, ".")
		if !ok || !f(rest) {
			return
		}
		n = rest
	}
}

// nearestAbove is the block suffix entry at the longest strict parent of n:
// the one that decides the names under n when n's own entry is gone.
func nearestAbove(slots map[string]*suffixSlot, n string) (*suffixSlot, bool) {
	var found *suffixSlot
	parents(n, func(p string) bool {
		if s, ok := slots[p]; ok {
			found = s
			return false
		}
		return true
	})
	return found, found != nil
}

// coveredBy reports whether an allow entry covers name n.
func coveredBy(allowBy map[string][]Ref, n string) bool {
	for _, a := range allowBy[n] {
		if a.Match != MatchBelow {
			return true
		}
	}
	return anyAbove(allowBy, n)
}

// anyAbove reports whether an allow suffix entry sits at a strict parent of n.
func anyAbove(allowBy map[string][]Ref, n string) bool {
	hit := false
	parents(n, func(p string) bool {
		for _, a := range allowBy[p] {
			if a.Match != MatchExact {
				hit = true
				return false
			}
		}
		return true
	})
	return hit
}

// allowInside reports whether another allow entry covers every name a
// covers.
func allowInside(allowBy map[string][]Ref, a Ref) bool {
	for _, o := range allowBy[a.Name] {
		if o.Match == MatchTree && a.Match != MatchTree {
			return true
		}
	}
	return anyAbove(allowBy, a.Name)
}

// wholeAllowed reports whether allow entries cover every name the block
// suffix entry b covers.
func wholeAllowed(allowBy map[string][]Ref, b Ref) bool {
	for _, o := range allowBy[b.Name] {
		if o.Match == MatchTree || (o.Match == MatchBelow && b.Match == MatchBelow) {
			return true
		}
	}
	return anyAbove(allowBy, b.Name)
}

// cutsInto reports whether allow entry a covers a name some block suffix
// entry covers. Block entries under a's name are not looked at: one that a
// covers whole is gone already (wholeAllowed), and one it does not cover
// whole (a is exact, or "*.d" versus an entry at d) meets a at a's name,
// which the checks here see.
func cutsInto(slots map[string]*suffixSlot, a Ref) bool {
	if s, ok := slots[a.Name]; ok {
		if s.ref.Match == MatchTree || a.Match != MatchExact {
			return true
		}
	}
	_, ok := nearestAbove(slots, a.Name)
	return ok
}
