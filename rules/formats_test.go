package rules

import (
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// dumpList is a list's entries as "LINE KIND NAME", in line order; KIND is
// "=" (exact), "*." (below), "||" (tree), prefixed by "@" for an allow.
func dumpList(l *List) []string {
	type item struct {
		line int
		s    string
	}
	var items []item
	for n, line := range l.Names {
		items = append(items, item{line, fmt.Sprintf("%d = %s", line, n)})
	}
	for _, e := range l.Entries {
		k := map[Match]string{MatchExact: "=", MatchBelow: "*.", MatchTree: "||"}[e.Match]
		if e.Allow {
			k = "@" + k
		}
		items = append(items, item{e.Line, fmt.Sprintf("%d %s %s", e.Line, k, e.Name)})
	}
	slices.SortStableFunc(items, func(a, b item) int {
		if a.line != b.line {
			return a.line - b.line
		}
		return strings.Compare(a.s, b.s)
	})
	out := make([]string, len(items))
	for i, it := range items {
		out[i] = it.s
	}
	return out
}

func TestParseSyntaxes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		in          string
		opt         ParseOptions
		path        string
		want        []string
		ignored     int
		unsupported int
		err         string
	}{
		{name: "plain and hosts", in: "a.example\n0.0.0.0 b.example c.example\n", want: []string{"1 = a.example", "2 = b.example", "2 = c.example"}},
		{name: "wildcard", in: "*.Ads.Example.\n*.x.example # tail\n", want: []string{"1 *. ads.example", "2 *. x.example"}},
		{name: "wildcard in hosts line", in: "0.0.0.0 *.ads.example\n", want: []string{"1 *. ads.example"}},
		{name: "bare star", in: "*\n", unsupported: 1},
		{name: "star inside", in: "ads.*.example\n", unsupported: 1},
		{name: "adblock tree", in: "||ads.example^\n||t.example^|\n", want: []string{"1 || ads.example", "2 || t.example"}},
		{name: "adblock exception", in: "@@||ok.example^\n", want: []string{"1 @|| ok.example"}},
		{name: "adblock headers and comments", in: "[Adblock Plus 2.0]\n! Title: x\n! Expires: 1 day\n||a.example^\n", want: []string{"4 || a.example"}, ignored: 3},
		{name: "adblock modifiers, paths, anchors skipped", in: "||a.example^$third-party\n||a.example/ads^\n||a.example:8080^\n||a.example\n|https://a.example/\n/banner/ad.\n@@||a.example^$document\n@@a.example\n||*.a.example^\nads.example$popup\n&ad_type=\n",
			want: nil, unsupported: 11},
		{name: "adblock cosmetic never a name", in: "example.com##.banner\nexample.com#@#.ad\nexample.com#?#div\nexample.com#$#x\n##.ad\n", unsupported: 4, ignored: 1},
		{name: "adblock bad name", in: "||exa_mple..com^\n", err: `list.txt:1: empty label: "||exa_mple..com^"`},
		{name: "dnsmasq", in: "address=/ads.example/0.0.0.0\nlocal=/t.example/\nserver=/Q.example/198.51.100.1\naddress=/a.example/b.example/::\nserver=/*.w.example/\naddress=/.dot.example/#\n",
			want: []string{"1 || ads.example", "2 || t.example", "3 || q.example", "4 || a.example", "4 || b.example", "5 *. w.example", "6 || dot.example"}},
		{name: "dnsmasq no domain", in: "server=198.51.100.1\naddress=/#/0.0.0.0\nserver=//198.51.100.1\n", unsupported: 3},
		{name: "dnsmasq bad name", in: "local=/bad!/\n", err: `list.txt:1: invalid character`},
		{name: "dnsmasq other directive", in: "cache-size=1000\n", unsupported: 1},
		{name: "mixed", in: "a.example\n||b.example^\n*.c.example\n@@||ok.b.example^\naddress=/d.example/0.0.0.0\n! c\n",
			want: []string{"1 = a.example", "2 || b.example", "3 *. c.example", "4 @|| ok.b.example", "5 || d.example"}, ignored: 1},
		{name: "duplicates per kind", in: "a.example\n*.a.example\n||a.example^\n||A.example^\nlocal=/a.example/\n@@||a.example^\n",
			want: []string{"1 = a.example", "2 *. a.example", "3 || a.example", "6 @|| a.example"}},
		{name: "subdomains", in: "a.example\n0.0.0.0 b.example\n*.c.example\n", opt: ParseOptions{Subdomains: true},
			want: []string{"1 || a.example", "2 || b.example", "3 *. c.example"}},
		{name: "allowlist", in: "a.example\n*.b.example\n||c.example^\n@@||d.example^\n", opt: ParseOptions{Allow: true},
			want: []string{"1 @= a.example", "2 @*. b.example", "3 @|| c.example", "4 @|| d.example"}},
		{name: "unicode", in: "Bücher.example\n*.ÉCOLE.example\n||日本.example^\n", want: []string{"1 = xn--bcher-kva.example", "2 *. xn--cole-9oa.example", "3 || xn--wgv71a.example"}},
		{name: "unicode full-width dot and ß", in: "straße．example\n", want: []string{"1 = xn--strae-oqa.example"}},
		{name: "unicode bidi", in: "a.example\n\u0627b.example\n", err: `list.txt:2: invalid internationalized name`},
		{name: "unicode joiner", in: "a\u200db.example\n", err: `list.txt:1: invalid internationalized name`},
		{name: "forced plain refuses adblock", in: "||a.example^\n", opt: ParseOptions{Format: "plain"}, err: `list.txt:1: invalid character`},
		{name: "forced hosts is plain", in: "0.0.0.0 a.example\n", opt: ParseOptions{Format: "hosts"}, want: []string{"1 = a.example"}},
		{name: "forced adblock skips bare names", in: "a.example\n||b.example^\n", opt: ParseOptions{Format: "adblock"}, want: []string{"2 || b.example"}, unsupported: 1},
		{name: "forced dnsmasq", in: "local=/a.example/\nbogus\n", opt: ParseOptions{Format: "dnsmasq"}, err: `list.txt:2: not a dnsmasq`},
		{name: "unknown format", in: "", opt: ParseOptions{Format: "bind"}, err: `unknown list format "bind"`},
		{name: "format not detected from one-off characters", in: "a.example\nexa!mple.com\n", err: `list.txt:2: invalid character`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := tt.path
			if path == "" {
				path = "list.txt"
			}
			l, err := ParseList(strings.NewReader(tt.in), path, tt.opt)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) || !IsInputError(err) {
					t.Fatalf("err = %v, want input error containing %q", err, tt.err)
				}
				if tt.unsupported == 0 {
					return
				}
				// Check what was read before the error, skipping it.
				opt := tt.opt
				opt.SkipInvalid = true
				if l, err = ParseList(strings.NewReader(tt.in), path, opt); err != nil {
					t.Fatal(err)
				}
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := dumpList(l); !slices.Equal(got, tt.want) {
				t.Errorf("entries\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
			if l.Ignored != tt.ignored || l.Unsupported != tt.unsupported {
				t.Errorf("ignored %d unsupported %d, want %d %d", l.Ignored, l.Unsupported, tt.ignored, tt.unsupported)
			}
		})
	}
}

func TestParseRPZ(t *testing.T) {
	t.Parallel()
	const zone = `$TTL 300
$ORIGIN rpz.example.
@ IN SOA localhost. root.localhost. (
    1 3600 600 86400 60 )
  IN NS localhost.
; comment
bad.example CNAME .
*.bad.example CNAME *.
ok.bad.example CNAME rpz-passthru.
drop.example CNAME rpz-drop.
Upper.Example CNAME .
abs.example.rpz.example. CNAME .
32.1.2.0.192.rpz-ip CNAME .
ns.evil.example.rpz-nsdname CNAME .
24.0.2.0.192.rpz-client-ip CNAME .
garden.example CNAME walled.garden.example.
tcp.example CNAME rpz-tcp-only.
local.example A 192.0.2.1
* CNAME .
bad.example CNAME .
`
	tests := []struct {
		name, in, path string
		opt            ParseOptions
		want           []string
		unsupported    int
		err            string
	}{
		{name: "zone", in: zone, path: "feed.txt", want: []string{"7 = bad.example", "8 *. bad.example", "9 @= ok.bad.example", "10 = drop.example", "11 = upper.example", "12 = abs.example"},
			unsupported: 10}, // $TTL, SOA, NS, 3 rpz- triggers, garden, tcp-only, A, "*"; the last line is a duplicate
		{name: "by name without origin", in: "bad.example CNAME .\n*.x.example CNAME .\n", path: "feed.rpz", want: []string{"1 = bad.example", "2 *. x.example"}},
		{name: "by name gz", in: "bad.example CNAME .\n", path: "feed.zone.gz", want: []string{"1 = bad.example"}},
		{name: "forced", in: "bad.example 300 IN CNAME .\n", path: "x.txt", opt: ParseOptions{Format: "rpz"}, want: []string{"1 = bad.example"}},
		{name: "soa owner as apex", in: "rpz.example. 60 SOA a. b. 1 2 3 4 5\nbad.example.rpz.example. CNAME .\nother.example. CNAME .\n", path: "x", want: []string{"2 = bad.example", "3 = other.example"}, unsupported: 1},
		{name: "allowlist", in: zone, path: "a.zone", opt: ParseOptions{Allow: true}, want: []string{"7 @= bad.example", "8 @*. bad.example", "9 @= ok.bad.example", "10 @= drop.example", "11 @= upper.example", "12 @= abs.example"}, unsupported: 10},
		{name: "syntax error", in: "$ORIGIN rpz.example.\nbad.example CNAME .\nx BOGUS .\n", path: "f.rpz", err: `f.rpz:3: invalid zone record`},
		{name: "bad trigger name", in: "$ORIGIN rpz.example.\nb_d!.example CNAME .\n", path: "f.rpz", err: `f.rpz:2: invalid character`},
		{name: "unicode trigger", in: "$ORIGIN rpz.example.\nbücher.example CNAME .\n", path: "f.rpz", want: []string{"2 = xn--bcher-kva.example"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			in := []byte(tt.in)
			if strings.HasSuffix(tt.path, ".gz") {
				in = gz(t, in)
			}
			l, err := ParseList(bytes.NewReader(in), tt.path, tt.opt)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) || !IsInputError(err) {
					t.Fatalf("err = %v, want input error containing %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if l.Format != "rpz" {
				t.Errorf("format %q, want rpz", l.Format)
			}
			if got := dumpList(l); !slices.Equal(got, tt.want) {
				t.Errorf("entries\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
			if tt.unsupported != 0 && l.Unsupported != tt.unsupported {
				t.Errorf("unsupported %d, want %d", l.Unsupported, tt.unsupported)
			}
		})
	}
}

func TestDetectRPZ(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]bool{
		"$ORIGIN x.\n":                   true,
		"; c\n$TTL 60\n":                 true,
		"@ IN SOA a. b. 1 2 3 4 5\n":     true,
		"a.example CNAME .\n":            true,
		"a.example CNAME rpz-passthru.":  true,
		"a.example\n0.0.0.0 b.example\n": false,
		"||soa.example^\n":               false,
		"a.example CNAME other.example.": false,
	} {
		l, err := ParseList(strings.NewReader(in), "list", ParseOptions{SkipInvalid: true})
		if err != nil {
			t.Fatalf("%q: %v", in, err)
		}
		if got := l.Format == "rpz"; got != want {
			t.Errorf("%q: rpz %v, want %v", in, got, want)
		}
	}
}

func gz(t testing.TB, b []byte) []byte {
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	if _, err := w.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestGzipAndGlobs(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write("feed-2026-11-21.txt.gz", gz(t, []byte("a.example\n||b.example^\n")))
	write("feed-2026-11-20.txt", []byte("c.example\n"))
	write("feed-2026-11-22.txt", gz(t, []byte("d.example\n"))) // gzip under a plain name
	write("plain.gz", []byte("e.example\n"))                   // decompressed already
	bad := write("bad.gz", gz(t, []byte("f.example\n"))[:20])  // truncated
	corrupt := gz(t, []byte("g.example\n"))
	corrupt[len(corrupt)-5] ^= 0xff // checksum
	badsum := write("badsum.gz", corrupt)

	ls, err := LoadLists([]string{filepath.Join(dir, "feed-2026-11-2?.txt*"), filepath.Join(dir, "plain.gz")}, ParseOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, l := range ls {
		got = append(got, filepath.Base(l.Path)+": "+strings.Join(dumpList(l), ", "))
	}
	want := []string{"feed-2026-11-20.txt: 1 = c.example", "feed-2026-11-21.txt.gz: 1 = a.example, 2 || b.example",
		"feed-2026-11-22.txt: 1 = d.example", "plain.gz: 1 = e.example"}
	if !slices.Equal(got, want) {
		t.Fatalf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for _, tc := range []struct{ path, want string }{
		{filepath.Join(dir, "nothing-*.txt"), "glob matches no file"},
		{filepath.Join(dir, "x[.txt"), "bad glob"},
		{bad, "bad.gz: bad gzip data"},
		{badsum, "badsum.gz: bad gzip data"},
	} {
		_, err := LoadLists([]string{tc.path}, ParseOptions{})
		if err == nil || !strings.Contains(err.Error(), tc.want) || !IsInputError(err) {
			t.Errorf("LoadLists(%s) = %v, want input error containing %q", tc.path, err, tc.want)
		}
	}
	// A file whose name holds glob characters is read as itself.
	lit := write("odd[1].txt", []byte("h.example\n"))
	if ls, err := LoadLists([]string{lit}, ParseOptions{}); err != nil || len(ls) != 1 || ls[0].Names["h.example"] != 1 {
		t.Fatalf("literal name with glob characters: %v, %v", ls, err)
	}
	var pe *ParseError
	if _, err := ParseList(bytes.NewReader(gz(t, []byte("ok.example\nbad!\n"))), "x.gz", ParseOptions{}); !errors.As(err, &pe) || pe.Line != 2 {
		t.Fatalf("error in gzip list: %v, want line 2", err)
	}
}
