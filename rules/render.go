package rules

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"
)

// Render prints the ruleset in nft syntax, as `nft -f` takes it.
func (rs *Ruleset) Render() string {
	var b strings.Builder
	fmt.Fprintf(&b, "table inet %s {\n", rs.Table)
	if rs.Comment != "" {
		fmt.Fprintf(&b, "\tcomment %q\n", rs.Comment)
	}
	for _, c := range rs.Counters {
		fmt.Fprintf(&b, "\n\tcounter %s {\n\t}\n", c)
	}
	for _, s := range rs.Sets {
		renderSet(&b, s)
	}
	renderChains(&b, rs.Chains)
	b.WriteString("}\n")
	for _, a := range rs.Aux {
		kw := map[Family]string{IPv4: "ip", IPv6: "ip6"}[a.Family]
		fmt.Fprintf(&b, "\ntable %s %s {", kw, rs.Table)
		renderChains(&b, a.Chains)
		b.WriteString("}\n")
	}
	return b.String()
}

func renderChains(b *strings.Builder, chains []*Chain) {
	for _, c := range chains {
		fmt.Fprintf(b, "\n\tchain %s {\n", c.Name)
		if c.Comment != "" {
			fmt.Fprintf(b, "\t\tcomment %q\n", c.Comment)
		}
		if c.Hook != HookNone {
			fmt.Fprintf(b, "\t\ttype %s hook %s priority %d; policy accept;\n", c.Type, c.Hook, c.Priority)
		}
		for _, r := range c.Rules {
			fmt.Fprintf(b, "\t\t%s\n", r.Text)
		}
		b.WriteString("\t}\n")
	}
}

func renderSet(b *strings.Builder, s *Set) {
	kind := "set"
	if s.IsMap() {
		kind = "map"
	}
	fmt.Fprintf(b, "\n\t%s %s {\n", kind, s.Name)
	switch {
	case s.Decl != "":
		fmt.Fprintf(b, "\t\t%s\n", s.Decl)
	case len(s.Typeof) > 0 && s.DataType == TypeVerdict:
		fmt.Fprintf(b, "\t\ttypeof %s : verdict\n", typeofText(s.Typeof))
	case len(s.Typeof) > 0:
		fmt.Fprintf(b, "\t\ttypeof %s\n", typeofText(s.Typeof))
	default:
		fmt.Fprintf(b, "\t\ttype %s\n", typeName(s.KeyType))
	}
	if s.Interval {
		b.WriteString("\t\tflags interval\n")
	}
	if s.Comment != "" {
		fmt.Fprintf(b, "\t\tcomment %q\n", s.Comment)
	}
	if len(s.Elements) > 0 {
		b.WriteString("\t\telements = {")
		for i, e := range s.Elements {
			if i > 0 {
				b.WriteString(",")
			}
			b.WriteString("\n\t\t\t")
			b.WriteString(elementText(s, e))
		}
		b.WriteString("\n\t\t}\n")
	}
	b.WriteString("\t}\n")
}

func typeofText(fs []Field) string {
	parts := make([]string, len(fs))
	for i, f := range fs {
		parts[i] = fmt.Sprintf("@%s,%d,%d", f.Base, f.OffsetBits, f.LenBits)
	}
	return strings.Join(parts, " . ")
}

func typeName(t DataType) string {
	return map[DataType]string{
		TypeIPv4Addr: "ipv4_addr", TypeIPv6Addr: "ipv6_addr", TypeInetService: "inet_service",
		TypeInteger: "integer", TypeVerdict: "verdict",
		TypeIPv4AddrPort: "ipv4_addr . inet_service", TypeIPv6AddrPort: "ipv6_addr . inet_service",
	}[t]
}

func elementText(s *Set, e Element) string {
	key := valueText(s.KeyType, s.Typeof, e.Key)
	if s.Interval {
		last := lastOf(e)
		key = key + "-" + valueText(s.KeyType, s.Typeof, last)
	}
	switch s.DataType {
	case TypeIPv4AddrPort, TypeIPv6AddrPort:
		n := len(e.Data) - 4
		a, _ := netip.AddrFromSlice(e.Data[:n])
		return fmt.Sprintf("%s : %s . %d", key, a, binary.BigEndian.Uint16(e.Data[n:]))
	case TypeInteger, TypeRaw:
		if len(e.Data) > 0 {
			return key + " : " + valueText(s.DataType, nil, e.Data)
		}
	case TypeVerdict:
		if e.Verdict != nil {
			return key + " : " + [...]string{"accept", "drop", "return", "jump " + e.Verdict.Chain, "goto " + e.Verdict.Chain}[e.Verdict.Kind]
		}
	}
	return key
}

// lastOf is the last value inside an interval element.
func lastOf(e Element) []byte {
	if e.KeyEnd == nil {
		out := make([]byte, len(e.Key))
		for i := range out {
			out[i] = 0xff
		}
		return out
	}
	out := append([]byte(nil), e.KeyEnd...)
	for i := len(out) - 1; i >= 0; i-- {
		out[i]--
		if out[i] != 0xff {
			break
		}
	}
	return out
}

func valueText(t DataType, typeof []Field, key []byte) string {
	switch t {
	case TypeIPv4Addr, TypeIPv6Addr:
		a, _ := netip.AddrFromSlice(key)
		return a.String()
	case TypeInteger:
		if len(key) == 4 {
			return fmt.Sprint(binary.LittleEndian.Uint32(key))
		}
		return fmt.Sprintf("0x%x", key) // a register-built key: its bytes in order
	}
	if len(typeof) == 0 {
		return fmt.Sprintf("0x%x", key)
	}
	// one hex value per typeof field, each padded to 4 bytes in the key
	var parts []string
	off := 0
	for _, f := range typeof {
		n := int(f.LenBits / 8)
		parts = append(parts, fmt.Sprintf("0x%x", key[off:off+n]))
		off += round4(n)
	}
	return strings.Join(parts, " . ")
}
