package rules

import (
	"bytes"
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
