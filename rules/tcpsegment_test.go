package rules

import (
	"encoding/binary"
	"testing"
)

// TestTCPOneQueryPerSegment runs TCP segments through the compiled chains:
// a segment holding exactly one query is matched as before; one holding
// more or less is unusual, passed by default (only the first query is
// matched) and dropped with --strict.
func TestTCPOneQueryPerSegment(t *testing.T) {
	t.Parallel()
	blocked, harmless := Wire("blocked.example"), Wire("harmless.example")
	framedQuery := func(wire []byte) []byte { return tcpPayload(wire) }
	concat := func(parts ...[]byte) []byte {
		var out []byte
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	withPrefix := func(seg []byte, prefix int) []byte {
		out := append([]byte(nil), seg...)
		binary.BigEndian.PutUint16(out, uint16(prefix))
		return out
	}
	one := framedQuery(harmless)
	// padded is a query of n bytes: the question, then an OPT record
	// whose padding option fills the rest, as the layout rules want it.
	padded := func(n int) []byte {
		msg := dnsQuery(harmless)
		msg[11] = 1 // ARCOUNT
		rdlen := n - len(msg) - 11
		msg = append(msg, 0, 0, 0x29, 0x10, 0, 0, 0, 0, 0)
		msg = binary.BigEndian.AppendUint16(msg, uint16(rdlen))
		msg = append(msg, 0, 12) // EDNS padding
		msg = binary.BigEndian.AppendUint16(msg, uint16(rdlen-4))
		msg = append(msg, make([]byte, rdlen-4)...)
		return append(binary.BigEndian.AppendUint16(nil, uint16(n)), msg...)
	}
	tests := []struct {
		name           string
		seg            []byte
		normal, strict string
	}{
		{"one harmless query", one, outPass, outPass},
		{"one blocked query", framedQuery(blocked), outBlocked, outBlocked},
		{"harmless, then blocked", concat(one, framedQuery(blocked)), outPass, outMalformed},
		{"blocked, then harmless", concat(framedQuery(blocked), one), outBlocked, outMalformed},
		{"one trailing byte", concat(one, []byte{0}), outPass, outMalformed},
		{"the query's last byte in a later segment", one[:len(one)-1], outPass, outMalformed},
		// With an OPT record the layout rules do not read the prefix.
		{"prefix below a query's minimum", withPrefix(padded(100), minTCPQuery-1), outPass, outMalformed},
		{"prefix above the maximum", withPrefix(padded(100), maxTCPQuery+1), outPass, outMalformed},
		{"largest query checked", padded(maxTCPQuery), outPass, outPass},
	}
	for _, strict := range []bool{false, true} {
		s := testSettings()
		s.Strict = strict
		rs, err := Compile(s, []*List{listOf(t, "blocked.example")})
		if err != nil {
			t.Fatal(err)
		}
		sim := newSim(rs)
		for _, tt := range tests {
			want := tt.normal
			if strict {
				want = tt.strict
			}
			got, err := sim.run("tcp", tt.seg)
			if err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Errorf("strict=%v, %s: %s, want %s", strict, tt.name, got, want)
			}
		}
	}
}
