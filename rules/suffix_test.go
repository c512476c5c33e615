package rules

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
)

// entryList is a list holding the given entries; a bare name is an exact
// block name, "*.d" is MatchBelow, "||d" is MatchTree, a leading "@@" an
// exception.
func entryList(t testing.TB, allowList bool, specs ...string) *List {
	t.Helper()
	l := &List{Path: "entries.txt", Names: map[string]int{}, Allow: allowList}
	for i, spec := range specs {
		e := Entry{Line: i + 1, Text: spec, Allow: allowList}
		if rest, ok := strings.CutPrefix(spec, "@@"); ok {
			e.Allow, spec = true, rest
		}
		switch {
		case strings.HasPrefix(spec, "*."):
			e.Match, spec = MatchBelow, spec[2:]
		case strings.HasPrefix(spec, "||"):
			e.Match, spec = MatchTree, spec[2:]
		}
		n, err := NormalizeName(spec)
		if err != nil {
			t.Fatal(err)
		}
		e.Name = n
		if e.Match == MatchExact && !e.Allow && !allowList {
			l.Names[n] = i + 1
			continue
		}
		l.Entries = append(l.Entries, e)
	}
	return l
}

// refBlocked is the precedence written plainly, to check the compiled
// chains against: any exception covering the name wins; otherwise any block
// entry covering it blocks.
func refBlocked(lists []*List, name string) bool {
	covers := func(e Entry) bool {
		switch e.Match {
		case MatchExact:
			return name == e.Name
		case MatchBelow:
			return strings.HasSuffix(name, "."+e.Name)
		default:
			return name == e.Name || strings.HasSuffix(name, "."+e.Name)
		}
	}
	blocked := false
	for _, l := range lists {
		if _, ok := l.Names[name]; ok {
			if l.Allow {
				return false
			}
			blocked = true
		}
		for _, e := range l.Entries {
			if covers(e) {
				if e.Allow || l.Allow {
					return false
				}
				blocked = true
			}
		}
	}
	return blocked
}

func TestSuffixEntries(t *testing.T) {
	t.Parallel()
	lists := []*List{
		entryList(t, false,
			"*.example.com", "||example.org", "||googletagmanager.com", "||abcdefghijklm.com",
			"exact.example.net", "a.b.example.com", // redundant under *.example.com
			"*.deep.example.edu", "@@||ok.example.com", "ads.ok.example.com",
			"||evil.example", "*.x.evil.example", // redundant
		),
		entryList(t, true, "good.example.org", "*.fine.example.org"),
	}
	rs := mustCompile(t, lists...)
	if r := rs.Stats.Resolve; r.ExactRedundant+r.BlockRedundant != 2 {
		t.Errorf("redundant = %+v, want 2 (a.b.example.com, *.x.evil.example)", rs.Stats.Resolve)
	}
	s := newSim(rs)
	r := rand.New(rand.NewPCG(3, 3))
	for _, tc := range []struct {
		name    string
		blocked bool
	}{
		{"a.example.com", true},
		{"x.y.example.com", true},
		{"example.com", false}, // *.d leaves the apex alone
		{"notexample.com", false},
		{"example.com.evil", false},
		{"example.org", true}, // ||d^ includes the apex
		{"www.example.org", true},
		{"googletagmanager.com", true},
		{"www.googletagmanager.com", true},
		{"x0googletagmanager.com", false}, // the length byte 16 folds onto '0'
		{"0googletagmanager.com", false},
		{"x-abcdefghijklm.com", false}, // 13 folds onto '-'
		{"a.abcdefghijklm.com", true},
		{"exact.example.net", true},
		{"sub.exact.example.net", false},
		{"deep.example.edu", false},
		{"a.deep.example.edu", true},
		{"ok.example.com", false}, // the exception beats *.example.com
		{"a.ok.example.com", false},
		{"ads.ok.example.com", false}, // and beats an exact block below it
		{"nok.example.com", true},
		{"evil.example", true},
		{"a.x.evil.example", true},
		{"good.example.org", false}, // allowlist, exact
		{"a.good.example.org", true},
		{"fine.example.org", true}, // *.fine... does not allow the apex
		{"a.fine.example.org", false},
		{"unrelated.example", false},
	} {
		if got := refBlocked(lists, tc.name); got != tc.blocked {
			t.Fatalf("reference says %s blocked=%v, test says %v", tc.name, got, tc.blocked)
		}
		for _, proto := range []string{"udp", "tcp"} {
			for range 4 {
				w := randomCase(r, Wire(tc.name))
				want := map[bool]string{true: outBlocked, false: outPass}[tc.blocked]
				if got := simOutcome(t, s, proto, w); got != want {
					t.Errorf("%s %q: %s, want %s", proto, w, got, want)
				}
			}
		}
	}
}

// TestSuffixAgainstReference pushes random names built from the listed
// labels (so that many are near misses) through the compiled chains and
// compares with the plain precedence.
func TestSuffixAgainstReference(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewPCG(7, 9))
	labels := []string{"a", "b0", "ex", "com", "org", "x-y", "0", "googletagmanager", "abcdefghijklm", "ok"}
	randName := func() string {
		n := 1 + r.IntN(4)
		parts := make([]string, n)
		for i := range parts {
			parts[i] = labels[r.IntN(len(labels))]
			if r.IntN(5) == 0 {
				parts[i] += labels[r.IntN(len(labels))]
			}
		}
		return strings.Join(parts, ".")
	}
	var specs, allow []string
	for range 60 {
		n := randName()
		switch r.IntN(6) {
		case 0:
			specs = append(specs, n)
		case 1, 2:
			specs = append(specs, "*."+n)
		case 3, 4:
			specs = append(specs, "||"+n)
		default:
			allow = append(allow, []string{"@@||", "*.", ""}[r.IntN(3)]+n)
		}
	}
	lists := []*List{entryList(t, false, specs...), entryList(t, true, allow...)}
	s := newSim(mustCompile(t, lists...))
	checked := map[bool]int{}
	ix := NewIndex(lists)
	for range 4000 {
		n := randName()
		want := refBlocked(lists, n)
		if d, err := ix.Check(n); err != nil || (d.Outcome == Blocked) != want {
			t.Fatalf("Check(%s) = %v, %v; the plain reference says blocked=%v", n, d, err, want)
		}
		checked[want]++
		for _, proto := range []string{"udp", "tcp"} {
			got := simOutcome(t, s, proto, randomCase(r, Wire(n)))
			if (got == outBlocked) != want {
				t.Fatalf("%s %s: %s, reference blocked=%v\nlists: %v / %v", proto, n, got, want, specs, allow)
			}
		}
	}
	if checked[true] < 100 || checked[false] < 100 {
		t.Fatalf("too few of one kind: %v", checked)
	}
	t.Logf("checked %v", fmt.Sprint(checked))
}

func TestSuffixGolden(t *testing.T) {
	t.Parallel()
	lists := []*List{
		entryList(t, false, "*.example.com", "||googletagmanager.com", "exact.example.net", "a.b.example.com", "@@||ok.example.com"),
		entryList(t, true, "good.example.com"),
	}
	got := mustCompile(t, lists...).Render()
	checkGolden(t, "suffix.nft.golden", got)
}

// TestFilterCoversSuffixes: every name under a listed suffix, in any case,
// falls in the filter (so it reaches the exact lookups), and most unrelated
// names do not (so they cost one lookup).
func TestFilterCoversSuffixes(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewPCG(11, 12))
	suffixes := []string{"example.com", "googletagmanager.com", "a.b.c.example.org", longName(70, 3), longName(64, 4), "x"}
	for range 200 {
		suffixes = append(suffixes, longName(4+r.IntN(60), r.Uint64()))
	}
	var spans []suffixSpan
	for _, d := range suffixes {
		spans = append(spans, belowSpan(d, 1))
	}
	in := func(key []byte) bool {
		for _, sp := range spans {
			if bytes.Compare(sp.lo, key) <= 0 && bytes.Compare(key, sp.hi) < 0 {
				return true
			}
		}
		return false
	}
	// the key the kernel builds for a query name of wire bytes w
	queryKey := func(w []byte) []byte { return reversedKey(w) }
	for _, d := range suffixes {
		for range 5 {
			prefix := longName(2+r.IntN(40), r.Uint64())
			n := prefix + "." + d
			if len(n) > 253 {
				continue
			}
			if w := randomCase(r, Wire(n)); !in(queryKey(w)) {
				t.Fatalf("%q under %q is not in the filter", w, d)
			}
		}
	}
	hits := 0
	for range 2000 {
		if in(queryKey(Wire(longName(4+r.IntN(60), r.Uint64())))) {
			hits++
		}
	}
	if hits > 100 {
		t.Errorf("%d of 2000 unrelated names hit the filter", hits)
	}
}

// TestSuffixResidual pins down the documented limits of suffix windows and
// that the compiler counts the entries they apply to.
func TestSuffixResidual(t *testing.T) {
	t.Parallel()
	label48 := strings.Repeat("a", 48)
	for _, tc := range []struct {
		suffix   string
		residual bool
	}{
		{"googletagmanager.com", false},        // 16 folds onto '0', but the boundary is compared exactly
		{"abcdefghijklm.com", false},           // 13 folds onto '-': same
		{label48 + ".example", true},           // 48 is '0' without any folding
		{strings.Repeat("b", 45) + ".x", true}, // 45 is '-'
		{"a.com", false},
	} {
		if got := suffixResidual(Wire(tc.suffix)); got != tc.residual {
			t.Errorf("suffixResidual(%s) = %v, want %v", tc.suffix, got, tc.residual)
		}
	}
	// The limit itself, through the compiled chains: a name that glues a
	// digit to a 48-character first label matches.
	rs := mustCompile(t, entryList(t, false, "*."+label48+".example"))
	if rs.Stats.SuffixResidual != 1 {
		t.Errorf("SuffixResidual = %d, want 1", rs.Stats.SuffixResidual)
	}
	s := newSim(rs)
	if got := simOutcome(t, s, "udp", Wire("x."+label48+".example")); got != outBlocked {
		t.Errorf("under the suffix: %s", got)
	}
	if got := simOutcome(t, s, "udp", Wire("x0"+label48+".example")); got != outBlocked {
		t.Errorf("glued digit: %s; the documented limit changed, update README", got)
	}
}

// TestLongSuffixes: suffixes longer than the 64-byte key go through the
// second map (the jhash of their tail, then the bytes before it); names
// that share a tail but not the rest, names glued to them, names under
// them and their exceptions decide as the plain precedence says.
func TestLongSuffixes(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewPCG(21, 22))
	var suffixes []string
	for len(suffixes) < 40 {
		d := longName(60+r.IntN(60), r.Uint64())
		if !suffixResidual(Wire(d)) {
			suffixes = append(suffixes, d)
		}
	}
	// Same tails, other heads: the second map must tell them apart.
	var sameTail []string
	for _, d := range suffixes[:10] {
		labels := strings.Split(d, ".")
		labels[0] = "zz" + labels[0][min(2, len(labels[0])-1):]
		if n := strings.Join(labels, "."); n != d && !suffixResidual(Wire(n)) {
			sameTail = append(sameTail, n)
		}
	}
	tail := func(d string) string { // a short parent of a long suffix
		labels := strings.Split(d, ".")
		return strings.Join(labels[len(labels)-2:], ".")
	}
	specs := []string{"@@||" + suffixes[0], "*." + tail(suffixes[1]), "@@||" + tail(suffixes[2])}
	for i, d := range suffixes {
		specs = append(specs, []string{"*.", "||"}[i%2]+d)
	}
	lists := []*List{entryList(t, false, specs...)}
	s := newSim(mustCompile(t, lists...))
	var probes []string
	for _, d := range append(append([]string{}, suffixes...), sameTail...) {
		probes = append(probes, d, "a."+d, "x0"+d, "b-"+d, "q.r."+d)
	}
	blocked := 0
	for _, n := range probes {
		if len(n) > 253 {
			continue
		}
		want := refBlocked(lists, n)
		if want {
			blocked++
		}
		for _, proto := range []string{"udp", "tcp"} {
			got := simOutcome(t, s, proto, randomCase(r, Wire(n)))
			if (got == outBlocked) != want {
				t.Errorf("%s %s (%d bytes): %s, want blocked=%v", proto, n, len(n)+2, got, want)
			}
		}
	}
	if blocked < 40 || blocked > len(probes)-40 {
		t.Errorf("%d of %d probes blocked: not a useful mix", blocked, len(probes))
	}
}

func TestSuffixNote(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		entry Entry
		want  string // a part of the note; "" for none
	}{
		{Entry{Name: "example.com", Match: MatchExact}, ""},
		{Entry{Name: "example.com", Match: MatchTree}, "every query layout"},
		{Entry{Name: strings.Repeat("a", 48) + ".example", Match: MatchBelow}, "glued to a hyphen or digit"},
		{Entry{Name: longName(130, 9), Match: MatchBelow}, "last 124 bytes only"},
	} {
		got := SuffixNote(Decision{Outcome: Blocked, Entry: tc.entry})
		if tc.want == "" && got != "" || !strings.Contains(got, tc.want) {
			t.Errorf("SuffixNote(%s %v) = %q, want it to say %q", tc.entry.Name, tc.entry.Match, got, tc.want)
		}
	}
}
