package rules

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// decideResolved is the decision rule Resolved documents, as a compiler
// would implement it: an allow entry passes the name; else the most
// specific of Exact and Block decides.
func decideResolved(res *Resolved, lists []*List, n string) (blocked bool, action string) {
	for _, a := range res.Allow {
		if a.Match.Covers(a.Name, n) {
			return false, ""
		}
	}
	for _, e := range res.Exact {
		if e.Name == n {
			return true, lists[e.List].Action
		}
	}
	byName := map[string]Ref{}
	for _, b := range res.Block {
		if _, dup := byName[b.Name]; dup {
			panic("two Block entries for " + b.Name)
		}
		byName[b.Name] = b
	}
	if b, ok := byName[n]; ok && b.Match == MatchTree {
		return true, lists[b.List].Action
	}
	for p := n; ; {
		_, rest, ok := strings.Cut(p, ".")
		if !ok {
			return false, ""
		}
		p = rest
		if b, ok := byName[p]; ok {
			return true, lists[b.List].Action
		}
	}
}

func dumpResolved(res *Resolved) string {
	var b strings.Builder
	for _, set := range []struct {
		name string
		refs []Ref
	}{{"exact", res.Exact}, {"block", res.Block}, {"allow", res.Allow}} {
		for _, r := range set.refs {
			fmt.Fprintf(&b, "%s %s %s @%d:%d\n", set.name, r.Match, r.Name, r.List, r.Line)
		}
	}
	fmt.Fprintf(&b, "%+v\n", res.Stats)
	return b.String()
}

func TestResolve(t *testing.T) {
	t.Parallel()
	type lst struct {
		text   string
		action string
		allow  bool
	}
	tests := []struct {
		name  string
		lists []lst
		want  string
	}{
		{"exact under suffix is redundant",
			[]lst{{text: "a.ads.example\n||ads.example^\nads.example\nother.example\n"}},
			"exact exact other.example @0:4\nblock tree ads.example @0:2\n{ExactAllowed:0 ExactRedundant:2 BlockAllowed:0 BlockRedundant:0 AllowRedundant:0 AllowUnused:0 ExactFromSplits:0}\n"},
		{"exact under *. is redundant, the apex is not",
			[]lst{{text: "*.ads.example\nads.example\nx.ads.example\n"}},
			"exact exact ads.example @0:2\nblock below ads.example @0:1\n{ExactAllowed:0 ExactRedundant:1 BlockAllowed:0 BlockRedundant:0 AllowRedundant:0 AllowUnused:0 ExactFromSplits:0}\n"},
		{"nested suffixes fold, label aligned",
			[]lst{{text: "||example^\n*.a.example\n||b.a.example^\n||notexample^\n"}},
			"block tree example @0:1\nblock tree notexample @0:4\n{ExactAllowed:0 ExactRedundant:0 BlockAllowed:0 BlockRedundant:2 AllowRedundant:0 AllowUnused:0 ExactFromSplits:0}\n"},
		{"different actions stay nested",
			[]lst{{text: "||example^\n"}, {text: "||a.example^\nb.example\n", action: "reject"}},
			"exact exact b.example @1:2\nblock tree a.example @1:1\nblock tree example @0:1\n{ExactAllowed:0 ExactRedundant:0 BlockAllowed:0 BlockRedundant:0 AllowRedundant:0 AllowUnused:0 ExactFromSplits:0}\n"},
		{"*.d before ||d^ with another action splits",
			[]lst{{text: "*.d.example\n"}, {text: "||d.example^\n", action: "reject"}},
			"exact exact d.example @1:1\nblock below d.example @0:1\n{ExactAllowed:0 ExactRedundant:0 BlockAllowed:0 BlockRedundant:0 AllowRedundant:0 AllowUnused:0 ExactFromSplits:1}\n"},
		{"allows: covered exact names go, carve-outs stay, unused and nested allows go",
			[]lst{{text: "a.example\n||t.example^\n@@||ok.t.example^\n@@||x.ok.t.example^\n@@||a.example^\n@@||free.example^\n*.w.example\n"},
				{text: "*.w.example\nz.example\n", allow: true}},
			"block tree t.example @0:2\nallow tree ok.t.example @0:3\n{ExactAllowed:1 ExactRedundant:0 BlockAllowed:1 BlockRedundant:0 AllowRedundant:1 AllowUnused:4 ExactFromSplits:0}\n"},
		{"first list wins a duplicate exact name",
			[]lst{{text: "a.example\n", action: "reject"}, {text: "a.example\n"}},
			"exact exact a.example @0:1\n{ExactAllowed:0 ExactRedundant:1 BlockAllowed:0 BlockRedundant:0 AllowRedundant:0 AllowUnused:0 ExactFromSplits:0}\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var lists []*List
			for i, l := range tt.lists {
				pl := mustParse(t, fmt.Sprintf("l%d", i), l.text, ParseOptions{Allow: l.allow})
				pl.Action = l.action
				lists = append(lists, pl)
			}
			res := Resolve(lists)
			if got := dumpResolved(res); got != tt.want {
				t.Errorf("got\n%s\nwant\n%s", got, tt.want)
			}
			checkResolvedAgrees(t, lists, res, probeNames(lists))
		})
	}
}

// probeNames are the names the lists mention, a label above and below
// each, and their parents.
func probeNames(lists []*List) []string {
	seen := map[string]bool{}
	add := func(n string) {
		for ; n != ""; _, n, _ = strings.Cut(n, ".") {
			seen[n] = true
		}
	}
	for _, l := range lists {
		for n := range l.Names {
			add("z." + n)
		}
		for _, e := range l.Entries {
			add("z." + e.Name)
			add("z0" + e.Name)
		}
	}
	out := make([]string, 0, len(seen))
	for n := range seen {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// checkResolvedAgrees: the folded entries decide every probe exactly as
// Check does over the lists (allowed = not blocked), with the same action.
func checkResolvedAgrees(t testing.TB, lists []*List, res *Resolved, probes []string) {
	t.Helper()
	ix := NewIndex(lists)
	for _, n := range probes {
		d, err := ix.Check(n)
		if err != nil {
			continue
		}
		blocked, action := decideResolved(res, lists, n)
		if blocked != (d.Outcome == Blocked) || (blocked && action != d.Action) {
			t.Fatalf("%s: Check says %s (action %q), Resolved says blocked=%v action %q\n%s", n, d, d.Action, blocked, action, dumpResolved(res))
		}
	}
}

// randomLists builds up to three lists from bytes: two blocklists with
// different actions and an allowlist, entries over a small tree of names
// so that they overlap a lot.
func randomLists(data []byte) []*List {
	universe := []string{"x"}
	for i := 0; i < len(universe) && len(universe) < 15; i++ {
		universe = append(universe, "a."+universe[i], "b."+universe[i])
	}
	lists := []*List{
		{Path: "l0", Names: map[string]int{}},
		{Path: "l1", Names: map[string]int{}, Action: "reject"},
		{Path: "l2", Names: map[string]int{}, Allow: true},
	}
	for i := 0; i+1 < len(data); i += 2 {
		l := lists[int(data[i])%3]
		kind := int(data[i]) / 3 % 6
		name := universe[int(data[i+1])%len(universe)]
		l.Lines++
		m := []Match{MatchExact, MatchBelow, MatchTree}[kind%3]
		allow := kind >= 3
		l.add(name, m, allow, name)
	}
	return lists
}

func TestResolveRandom(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewPCG(1, 2))
	for range 3000 {
		data := make([]byte, 2*(1+r.IntN(12)))
		for i := range data {
			data[i] = byte(r.UintN(256))
		}
		lists := randomLists(data)
		checkResolvedAgrees(t, lists, Resolve(lists), probeNames(lists))
	}
}

func FuzzResolve(f *testing.F) {
	f.Add([]byte{0, 1, 3, 1, 7, 2, 1, 9})
	f.Add([]byte{6, 0, 1, 0, 15, 4})
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 64 {
			return
		}
		lists := randomLists(data)
		checkResolvedAgrees(t, lists, Resolve(lists), probeNames(lists))
	})
}
