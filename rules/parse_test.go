package rules

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestNormalizeName(t *testing.T) {
	t.Parallel()
	long63 := strings.Repeat("a", 63)
	name253 := strings.Repeat(long63+".", 3) + strings.Repeat("b", 61)
	tests := []struct {
		in, want, err string
	}{
		{in: "Example.COM", want: "example.com"},
		{in: "example.com.", want: "example.com"},
		{in: "_dmarc.x-y.example", want: "_dmarc.x-y.example"},
		{in: long63 + ".com", want: long63 + ".com"},
		{in: long63 + "a.com", err: "label longer than 63"},
		{in: "a..b", err: "empty label"},
		{in: ".a", err: "empty label"},
		{in: ".", err: "empty name"},
		{in: "", err: "empty name"},
		{in: "a b", err: "invalid character"},
		{in: "exa!mple.com", err: "invalid character"},
		{in: "bücher.de", err: "invalid character"},
		// 253 presentation bytes = 255 wire bytes: the longest allowed
		{in: name253, want: name253},
		{in: name253 + "a", err: "longer than 255"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := NormalizeName(tt.in)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("NormalizeName(%q) = %q, %v; want error containing %q", tt.in, got, err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("NormalizeName(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
			}
			if WireLen(got) != len(Wire(got)) || WireLen(got) > MaxWireLen {
				t.Fatalf("wire length of %q: %d vs %d", got, WireLen(got), len(Wire(got)))
			}
		})
	}
}

func TestWire(t *testing.T) {
	t.Parallel()
	got := Wire("example.com")
	want := []byte("\x07example\x03com\x00")
	if string(got) != string(want) {
		t.Fatalf("Wire = %q, want %q", got, want)
	}
}

func TestParseList(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		in      string
		want    []string
		dups    int
		wantErr string
	}{
		{name: "plain", in: "a.example\nb.example\n", want: []string{"a.example", "b.example"}},
		{name: "bom crlf case dots", in: "\xef\xbb\xbfA.Example.\r\nb.EXAMPLE\r\n", want: []string{"a.example", "b.example"}},
		{name: "comments and blanks", in: "# header\n\n  a.example  # trailing\n\t\n#b.example\n", want: []string{"a.example"}},
		{name: "hosts lines", in: "0.0.0.0 a.example\n127.0.0.1 b.example c.example\n::1 d.example\n", want: []string{"a.example", "b.example", "c.example", "d.example"}},
		{name: "hosts boilerplate ignored", in: "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n255.255.255.255 broadcasthost\n0.0.0.0 0.0.0.0\nfe80::1%lo0 localhost\n0.0.0.0 x.example\n", want: []string{"x.example"}},
		{name: "duplicates merged", in: "a.example\nA.example\n0.0.0.0 a.example.\n", want: []string{"a.example"}, dups: 2},
		{name: "bad char", in: "a.example\nbad name!\n", wantErr: `list.txt:2: more than one name on a line that is not a hosts line: "bad name!"`},
		{name: "bad char single", in: "a.example\n\nbad!\n", wantErr: `list.txt:3: invalid character (allowed: letters, digits, hyphen, underscore): "bad!"`},
		{name: "long label", in: strings.Repeat("a", 64) + ".com\n", wantErr: `list.txt:1: label longer than 63 bytes`},
		{name: "hosts without name", in: "0.0.0.0\n", wantErr: `list.txt:1: hosts line without a name: "0.0.0.0"`},
		{name: "bad name in hosts line", in: "0.0.0.0 ok.example bad..example\n", wantErr: `list.txt:1: empty label: "bad..example"`},
		{name: "line too long", in: "a.example\n" + strings.Repeat("x", maxLineLen+10) + "\n", wantErr: `list.txt:2: line longer than`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			l, err := ParseList(strings.NewReader(tt.in), "list.txt", ParseOptions{})
			if tt.wantErr != "" {
				var pe *ParseError
				if err == nil || !errors.As(err, &pe) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want ParseError containing %q", err, tt.wantErr)
				}
				if !IsInputError(err) {
					t.Fatalf("IsInputError(%v) = false", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for n := range l.Names {
				got = append(got, n)
			}
			slices.Sort(got)
			if !slices.Equal(got, tt.want) {
				t.Fatalf("names = %q, want %q", got, tt.want)
			}
			if l.Dups != tt.dups {
				t.Fatalf("dups = %d, want %d", l.Dups, tt.dups)
			}
		})
	}
}

func TestParseListSkipInvalid(t *testing.T) {
	t.Parallel()
	in := "ok.example\nbad!\n0.0.0.0 also.ok\nx..y\n"
	l, err := ParseList(strings.NewReader(in), "l", ParseOptions{SkipInvalid: true})
	if err != nil {
		t.Fatal(err)
	}
	if l.Skipped != 2 || len(l.Names) != 2 || l.Names["also.ok"] != 3 {
		t.Fatalf("skipped %d, names %v", l.Skipped, l.Names)
	}
}

func TestLoadListsErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	good := filepath.Join(dir, "good.txt")
	if err := os.WriteFile(good, []byte("a.example\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ path, want string }{
		{filepath.Join(dir, "missing.txt"), "missing.txt: no such file"},
		{dir, "is a directory"},
	} {
		_, err := LoadLists([]string{good, tc.path}, ParseOptions{})
		if err == nil || !strings.Contains(err.Error(), tc.want) || !IsInputError(err) {
			t.Errorf("LoadLists(%s) = %v, want input error containing %q", tc.path, err, tc.want)
		}
	}
	ls, err := LoadLists([]string{good}, ParseOptions{})
	if err != nil || len(ls) != 1 || ls[0].Names["a.example"] != 1 {
		t.Fatalf("LoadLists = %v, %v", ls, err)
	}
}

func TestParseUpstreamAndRate(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"198.51.100.1":        "198.51.100.1:53",
		"198.51.100.1:5353":   "198.51.100.1:5353",
		"[2001:db8::1]:5353":  "[2001:db8::1]:5353",
		"2001:db8::1":         "[2001:db8::1]:53",
		"::ffff:198.51.100.7": "198.51.100.7:53",
	} {
		got, err := ParseUpstream(in)
		if err != nil || got.String() != want {
			t.Errorf("ParseUpstream(%q) = %v, %v; want %s", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "x", "198.51.100.1:0", "198.51.100.1:99999", "2001:db8::1:53:"} {
		if _, err := ParseUpstream(bad); err == nil || !IsInputError(err) {
			t.Errorf("ParseUpstream(%q) = %v, want input error", bad, err)
		}
	}
	r, err := ParseRate("10/minute")
	if err != nil || r.N != 10 || r.Unit != PerMinute || r.String() != "10/minute" {
		t.Errorf("ParseRate = %v, %v", r, err)
	}
	for _, bad := range []string{"0/second", "1/fortnight", "x/second", "5"} {
		if _, err := ParseRate(bad); err == nil {
			t.Errorf("ParseRate(%q) accepted", bad)
		}
	}
}
