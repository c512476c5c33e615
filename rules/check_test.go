package rules

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

func mustParse(t testing.TB, path, in string, opt ParseOptions) *List {
	t.Helper()
	l, err := ParseList(strings.NewReader(in), path, opt)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestCheckDecisions(t *testing.T) {
	t.Parallel()
	block := mustParse(t, "block.txt", strings.Join([]string{
		"ads.example",              // 1
		"*.wild.example",           // 2
		"||tree.example^",          // 3
		"@@||ok.tree.example^",     // 4
		"x.tree.example",           // 5: exact, inside the tree
		"googletagmanager.com",     // 6
		"*.googletagmanager.com",   // 7
		"||deep.a.tree.example^",   // 8
		"@@exact.wild.example",     // 9: not an exception (adblock without ||): unsupported
		"address=/Bücher.example/", // 10
	}, "\n"), ParseOptions{})
	second := mustParse(t, "second.txt", "||wild.example^\nads.example\n*.tree.example\n", ParseOptions{})
	second.Action = "reject"
	allow := mustParse(t, "allow.txt", "only.ads.example\n*.wild.example\n", ParseOptions{Allow: true})
	tests := []struct {
		lists []*List
		name  string
		want  string
	}{
		{nil, "ads.example", "not listed"},
		{[]*List{block}, "ADS.Example.", "blocked by block.txt:1 (ads.example)"},
		{[]*List{block}, "sub.ads.example", "not listed"},
		{[]*List{block}, "wild.example", "not listed"},
		{[]*List{block}, "a.wild.example", "blocked by block.txt:2 (*.wild.example)"},
		{[]*List{block}, "a.b.WILD.example", "blocked by block.txt:2 (*.wild.example)"},
		{[]*List{block}, "notwild.example", "not listed"},
		{[]*List{block}, "wild.example.evil", "not listed"},
		{[]*List{block}, "tree.example", "blocked by block.txt:3 (||tree.example^)"},
		{[]*List{block}, "a.tree.example", "blocked by block.txt:3 (||tree.example^)"},
		{[]*List{block}, "ok.tree.example", "allowed by block.txt:4 (@@||ok.tree.example^)"},
		{[]*List{block}, "a.ok.tree.example", "allowed by block.txt:4 (@@||ok.tree.example^)"},
		{[]*List{block}, "x.tree.example", "blocked by block.txt:5 (x.tree.example)"},
		{[]*List{block}, "y.deep.a.tree.example", "blocked by block.txt:8 (||deep.a.tree.example^)"},
		{[]*List{block}, "x0googletagmanager.com", "not listed"},
		{[]*List{block}, "googletagmanager.com", "blocked by block.txt:6 (googletagmanager.com)"},
		{[]*List{block}, "www.googletagmanager.com", "blocked by block.txt:7 (*.googletagmanager.com)"},
		{[]*List{block}, "exact.wild.example", "blocked by block.txt:2 (*.wild.example)"},
		{[]*List{block}, "bücher.example", "blocked by block.txt:10 (address=/Bücher.example/)"},
		{[]*List{block}, "xn--bcher-kva.example", "blocked by block.txt:10 (address=/Bücher.example/)"},
		// Across lists: most specific wins; ties go to the first list.
		{[]*List{block, second}, "wild.example", "blocked by second.txt:1 (||wild.example^)"},
		{[]*List{block, second}, "a.wild.example", "blocked by block.txt:2 (*.wild.example)"},
		{[]*List{second, block}, "a.wild.example", "blocked by second.txt:1 (||wild.example^)"},
		{[]*List{second, block}, "ads.example", "blocked by second.txt:2 (ads.example)"},
		{[]*List{block, second}, "a.tree.example", "blocked by block.txt:3 (||tree.example^)"}, // *.d and ||d^ tie below d: the first list
		{[]*List{second, block}, "a.tree.example", "blocked by second.txt:3 (*.tree.example)"},
		// Allow beats block, whatever the specificity.
		{[]*List{block, second, allow}, "only.ads.example", "allowed by allow.txt:1 (only.ads.example)"},
		{[]*List{block, second, allow}, "a.wild.example", "allowed by allow.txt:2 (*.wild.example)"},
		{[]*List{block, second, allow}, "wild.example", "blocked by second.txt:1 (||wild.example^)"},
		{[]*List{allow}, "unlisted.only.ads.example", "not listed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := Check(tt.lists, tt.name)
			if err != nil {
				t.Fatal(err)
			}
			if got := d.String(); got != tt.want {
				t.Errorf("Check(%q) = %s, want %s", tt.name, got, tt.want)
			}
			if d.Outcome == Blocked && d.Action != tt.lists[d.List].Action {
				t.Errorf("action %q, want the list's %q", d.Action, tt.lists[d.List].Action)
			}
		})
	}
	if _, err := Check([]*List{block}, "bad name!"); err == nil || !IsInputError(err) {
		t.Errorf("invalid name: %v", err)
	}
}

// TestGoldenMixed parses a list mixing every syntax and prints its entries
// and the decisions for probe names (go test ./rules -run Golden -update).
func TestGoldenMixed(t *testing.T) {
	in, err := os.ReadFile("testdata/mixed.list")
	if err != nil {
		t.Fatal(err)
	}
	l := mustParse(t, "mixed.list", string(in), ParseOptions{})
	allow := mustParse(t, "allow.list", "*.ok.wild.example\n", ParseOptions{Allow: true})
	var b strings.Builder
	fmt.Fprintf(&b, "lines %d, ignored %d, unsupported %d, skipped %d, duplicates %d\n", l.Lines, l.Ignored, l.Unsupported, l.Skipped, l.Dups)
	for _, e := range dumpList(l) {
		fmt.Fprintln(&b, e)
	}
	ix := NewIndex([]*List{l, allow})
	for _, n := range []string{
		"ads.example", "x.ads.example", "tracker.example", "BEACON.example", "localhost",
		"wild.example", "a.wild.example", "a.ok.wild.example", "notwild.example",
		"tree.example", "a.b.tree.example", "ok.tree.example", "x.ok.tree.example", "nottree.example",
		"dnsmasq.example", "x.dnsmasq.example", "other.example", "fwd.example", "a.fwd.example",
		"bücher.example", "www.xn--bcher-kva.example", "googletagmanager.com", "www.googletagmanager.com",
		"x0googletagmanager.com", "cdn.example", "example.org", "tree.example.evil",
	} {
		d, err := ix.Check(n)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s: %s\n", n, d)
	}
	checkGolden(t, "mixed.golden", b.String())
}
