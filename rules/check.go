package rules

import (
	"fmt"
	"strings"
)

// Outcome is what the lists decide for a name.
type Outcome uint8

const (
	NotListed Outcome = iota
	Blocked
	Allowed
)

// Decision is the outcome for one name and the entry that decided it.
type Decision struct {
	Outcome Outcome
	List    int    // index of the deciding entry's list
	Action  string // the list's Action when Blocked ("" = the default)
	Source  Source // file and line of the deciding entry
	Entry   Entry  // the deciding entry; for a plain exact name Text is the name
}

// String explains the decision: "blocked by FILE:LINE (*.example.com)",
// "allowed by FILE:LINE (@@||x^)", "not listed".
func (d Decision) String() string {
	switch d.Outcome {
	case Blocked:
		return fmt.Sprintf("blocked by %s:%d (%s)", d.Source.File, d.Source.Line, d.Entry.Text)
	case Allowed:
		return fmt.Sprintf("allowed by %s:%d (%s)", d.Source.File, d.Source.Line, d.Entry.Text)
	}
	return "not listed"
}

// entryRef is one entry of one list, in an Index.
type entryRef struct {
	list  int
	entry Entry
}

// Index answers Check for many names over the same lists: the entries by
// name. Build it once with NewIndex; it is read-only afterwards.
type Index struct {
	lists   []*List
	entries map[string][]entryRef // in list order, then file order
}

// NewIndex indexes the lists' Entries. Names of an allowlist (a List built
// by hand with Allow and Names) count as exact allow entries.
func NewIndex(lists []*List) *Index {
	ix := &Index{lists: lists, entries: make(map[string][]entryRef)}
	for i, l := range lists {
		for _, e := range l.Entries {
			ix.entries[e.Name] = append(ix.entries[e.Name], entryRef{i, e})
		}
	}
	return ix
}

// Check says what the lists decide for name, and why. The rules, in order:
//  1. allow beats block: if any allow entry covers the name, it is allowed
//     (the reported entry is the most specific allow);
//  2. among block entries the most specific decides: an exact name, then a
//     "||name^" entry for the name itself, then the entry for the longest
//     parent name; a tie goes to the first list, then the first line;
//  3. otherwise the name is not listed.
//
// Suffixes match at label boundaries only. Names are compared like the
// kernel does: case-insensitively; a Unicode name is converted to punycode.
// An invalid name is an *InputError.
func Check(lists []*List, name string) (Decision, error) {
	return NewIndex(lists).Check(name)
}

// Check is the package-level Check over the indexed lists.
func (ix *Index) Check(name string) (Decision, error) {
	n, err := entryName(name)
	if err != nil {
		return Decision{}, &InputError{Err: err}
	}
	if d, ok := ix.find(n, true); ok {
		return d, nil
	}
	if d, ok := ix.find(n, false); ok {
		return d, nil
	}
	return Decision{}, nil
}

// find returns the most specific entry with the given allow flag that
// covers n.
func (ix *Index) find(n string, allow bool) (Decision, bool) {
	// The name itself: exact entries first, then "||n^".
	for i, l := range ix.lists {
		if l.Allow != allow {
			continue
		}
		if line, ok := l.Names[n]; ok {
			return ix.decision(i, Entry{Name: n, Match: MatchExact, Allow: allow, Line: line, Text: n}), true
		}
	}
	for _, want := range []Match{MatchExact, MatchTree} {
		for _, r := range ix.entries[n] {
			if r.entry.Allow == allow && r.entry.Match == want {
				return ix.decision(r.list, r.entry), true
			}
		}
	}
	// Parents, longest first: any suffix entry covers n.
	for p := n; ; {
		_, rest, ok := strings.Cut(p, ".")
		if !ok {
			return Decision{}, false
		}
		p = rest
		for _, r := range ix.entries[p] {
			if r.entry.Allow == allow && r.entry.Match != MatchExact {
				return ix.decision(r.list, r.entry), true
			}
		}
	}
}

func (ix *Index) decision(list int, e Entry) Decision {
	v := Blocked
	if e.Allow {
		v = Allowed
	}
	d := Decision{Outcome: v, List: list, Source: Source{File: ix.lists[list].Path, Line: e.Line}, Entry: e}
	if v == Blocked {
		d.Action = ix.lists[list].Action
	}
	return d
}
