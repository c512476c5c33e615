package rules

import (
	"bytes"
	"slices"
	"strings"
	"testing"
)

// decodeWire is an independent reader of wire-format names, for round trips.
func decodeWire(w []byte) (string, bool) {
	var labels []string
	for p := 0; p < len(w); {
		n := int(w[p])
		if n == 0 {
			return strings.Join(labels, "."), p == len(w)-1
		}
		if n > 63 || p+1+n >= len(w) {
			return "", false
		}
		labels = append(labels, string(w[p+1:p+1+n]))
		p += 1 + n
	}
	return "", false
}

func FuzzParseList(f *testing.F) {
	for _, s := range []string{
		"a.example\n", "0.0.0.0 a.example b.example # c\r\n", "\xef\xbb\xbfA.B.\n", "bad name!\n",
		"::1 localhost\n", "x..y\n", strings.Repeat("a", 64) + ".b\n", "#\n\n\t\n",
		"*.a.example\n0.0.0.0 *.b.example\n", "bücher.example\n", "a.example\n*.a.example\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		for _, skip := range []bool{false, true} {
			l, err := ParseList(strings.NewReader(in), "fuzz.txt", ParseOptions{SkipInvalid: skip})
			if err != nil {
				if !IsInputError(err) && !strings.Contains(err.Error(), "read fuzz.txt") {
					t.Fatalf("non-input error %v", err)
				}
				continue
			}
			checkRoundTrip(t, l)
			for n := range l.Names {
				again, err := NormalizeName(n)
				if err != nil || again != n {
					t.Fatalf("accepted %q does not normalise to itself: %q, %v", n, again, err)
				}
				w := Wire(n)
				if len(w) > MaxWireLen {
					t.Fatalf("accepted %q has %d wire bytes", n, len(w))
				}
				if back, ok := decodeWire(w); !ok || back != n {
					t.Fatalf("wire round trip of %q gave %q (%v)", n, back, ok)
				}
			}
		}
	})
}

// FuzzCompiledLookup: every name the builder accepts is found by the
// compiled lookup structure in any letter case, over UDP and TCP, and a
// different ordinary name is not.
func FuzzCompiledLookup(f *testing.F) {
	f.Add("blocked.example", uint64(0x5555), "blocked.exampla")
	f.Add("abcdefghijklm.com", uint64(3), "x-abcdefghijklm.com")
	f.Add(longName(200, 9), uint64(1<<40-1), longName(200, 10))
	f.Fuzz(func(t *testing.T, listed string, caseBits uint64, other string) {
		n, err := NormalizeName(listed)
		if err != nil {
			return
		}
		rs, err := Compile(testSettings(), []*List{{Path: "f", Names: map[string]int{n: 1}}})
		if err != nil {
			t.Fatal(err)
		}
		s := newSim(rs)
		w := Wire(n)
		for i := range w {
			if w[i] >= 'a' && w[i] <= 'z' && caseBits>>(i%64)&1 == 1 {
				w[i] -= 0x20
			}
		}
		for _, proto := range []string{"udp", "tcp"} {
			if got := simOutcome(t, s, proto, w); got != outBlocked {
				t.Fatalf("%s %q: %s, want blocked", proto, w, got)
			}
		}
		o, err := NormalizeName(other)
		if err != nil || o == n {
			return
		}
		ow := Wire(o)
		if bytes.Equal(bytes.ToLower(ow), Wire(n)) {
			return
		}
		for _, proto := range []string{"udp", "tcp"} {
			if got := simOutcome(t, s, proto, ow); got != outPass {
				t.Fatalf("%s %q with %q listed: %s, want pass", proto, o, n, got)
			}
		}
	})
}

// FuzzWire: the encoder accepts exactly what NormalizeName accepts, and its
// output decodes back to the same name within DNS's limits.
func FuzzWire(f *testing.F) {
	for _, s := range []string{"example.com", "A.B.", "x", strings.Repeat("a", 63) + ".b", "_srv._tcp.x-y", "a..b", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		n, err := NormalizeName(in)
		if err != nil {
			return
		}
		w := Wire(n)
		if len(w) != WireLen(n) || len(w) > MaxWireLen {
			t.Fatalf("%q: %d wire bytes, WireLen %d", n, len(w), WireLen(n))
		}
		back, ok := decodeWire(w)
		if !ok || back != n {
			t.Fatalf("%q: decodes to %q (%v)", n, back, ok)
		}
		if !bytes.Equal(bytes.ToLower(Wire(strings.ToUpper(n))), w) {
			t.Fatalf("%q: case changes the wire form beyond letters", n)
		}
	})
}

// checkRoundTrip: every accepted entry is a normalised name, and a name it
// covers is decided by Check as the entries say: allowed if an allow entry
// covers it, else blocked by an entry that covers it and is at least as
// specific as this one.
func checkRoundTrip(t *testing.T, l *List) {
	t.Helper()
	lists := []*List{l}
	ix := NewIndex(lists)
	all := slices.Clone(l.Entries)
	for n, line := range l.Names {
		all = append(all, Entry{Name: n, Match: MatchExact, Line: line, Text: n})
	}
	for _, e := range all {
		if again, err := NormalizeName(e.Name); err != nil || again != e.Name {
			t.Fatalf("entry %+v: name does not normalise to itself (%q, %v)", e, again, err)
		}
		if e.Text == "" || (len(e.Text) > maxEntryText && e.Text != e.Name) || e.Line < 1 || e.Line > l.Lines {
			t.Fatalf("entry %+v: bad text or line (%d lines)", e, l.Lines)
		}
		var probes []string
		if e.Match != MatchBelow {
			probes = append(probes, e.Name)
		}
		if e.Match != MatchExact && WireLen(e.Name)+2 <= MaxWireLen {
			probes = append(probes, "z."+e.Name)
		}
		for _, p := range probes {
			if !e.Match.Covers(e.Name, p) {
				t.Fatalf("entry %+v does not cover %q", e, p)
			}
			d, err := ix.Check(p)
			if err != nil {
				t.Fatalf("Check(%q): %v", p, err)
			}
			allowed := false
			for _, o := range all {
				allowed = allowed || (o.Allow && o.Match.Covers(o.Name, p))
			}
			switch {
			case allowed && d.Outcome != Allowed, !allowed && d.Outcome != Blocked:
				t.Fatalf("Check(%q) = %s, entry %+v (allowed by some entry: %v)", p, d, e, allowed)
			case !d.Entry.Match.Covers(d.Entry.Name, p):
				t.Fatalf("Check(%q) = %s: that entry does not cover it", p, d)
			case d.Entry.Allow == e.Allow && len(d.Entry.Name) < len(e.Name):
				t.Fatalf("Check(%q) = %s: less specific than %+v", p, d, e)
			case d.Entry == e && d.Source.Line != e.Line:
				t.Fatalf("Check(%q) = %s: line of %+v", p, d, e)
			}
		}
	}
}

// fuzzFormat parses in with the format forced and detected, strictly and
// skipping invalid lines: no panics, only input errors, round trips.
func fuzzFormat(t *testing.T, in, format, path string) {
	for _, f := range []string{format, ""} {
		for _, opt := range []ParseOptions{{Format: f}, {Format: f, SkipInvalid: true}, {Format: f, Subdomains: true}, {Format: f, Allow: true, SkipInvalid: true}} {
			l, err := ParseList(strings.NewReader(in), path, opt)
			if err != nil {
				if !IsInputError(err) {
					t.Fatalf("%+v: non-input error %v", opt, err)
				}
				continue
			}
			if opt.Allow && len(l.Names) > 0 {
				t.Fatalf("allowlist with block names %v", l.Names)
			}
			checkRoundTrip(t, l)
		}
	}
}

func FuzzParseAdblock(f *testing.F) {
	for _, s := range []string{"[Adblock Plus 2.0]\n! x\n||a.example^\n@@||b.a.example^\n", "||a.example^$third-party\n", "||a.example/x^\n",
		"example.com##.ad\n", "||xn--bcher-kva.example^|\n", "||bücher.example^\n", "@@||a^\n||a^\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) { fuzzFormat(t, in, "adblock", "f.txt") })
}

func FuzzParseDnsmasq(f *testing.F) {
	for _, s := range []string{"address=/a.example/0.0.0.0\n", "local=/a.example/b.example/\n", "server=/*.a.example/198.51.100.1\n",
		"server=198.51.100.1\n", "address=/#/::\n", "cache-size=10\n", "address=/.a.example/\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) { fuzzFormat(t, in, "dnsmasq", "f.conf") })
}

func FuzzParseRPZ(f *testing.F) {
	for _, s := range []string{"$TTL 60\n$ORIGIN rpz.example.\n@ SOA a. b. 1 2 3 4 5\n NS a.\nbad.example CNAME .\n*.bad.example CNAME *.\nok.bad.example CNAME rpz-passthru.\n",
		"x.rpz-ip CNAME .\n", "a A 192.0.2.1\n", "a CNAME rpz-drop.\n", "* CNAME .\n", "rpz.example. SOA a. b. 1 2 3 4 5\na.rpz.example. CNAME .\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) { fuzzFormat(t, in, "rpz", "f.rpz") })
}

func FuzzParseMixed(f *testing.F) {
	f.Add("a.example\n*.b.example\n||c.example^\n@@||d.c.example^\naddress=/e.example/0.0.0.0\n! x\n0.0.0.0 f.example\n")
	f.Fuzz(func(t *testing.T, in string) { fuzzFormat(t, in, "plain", "f.txt") })
}
