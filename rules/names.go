package rules

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// MaxWireLen is the longest a name may be in DNS wire format (RFC 1035).
const MaxWireLen = 255

// MaxLabelLen is the longest a label may be.
const MaxLabelLen = 63

var (
	errEmptyName   = errors.New("empty name")
	errEmptyLabel  = errors.New("empty label")
	errLongLabel   = errors.New("label longer than 63 bytes")
	errLongName    = errors.New("name longer than 255 bytes in wire format")
	errInvalidChar = errors.New("invalid character (allowed: letters, digits, hyphen, underscore)")
)

// NormalizeName lowercases an ASCII name, drops one trailing dot and
// validates it: labels of 1-63 bytes of letters, digits, hyphens and
// underscores, at most 255 bytes in wire format.
func NormalizeName(s string) (string, error) {
	s = strings.TrimSuffix(s, ".")
	if s == "" {
		return "", errEmptyName
	}
	var b strings.Builder
	b.Grow(len(s))
	labelLen := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '.':
			if labelLen == 0 {
				return "", errEmptyLabel
			}
			labelLen = 0
			b.WriteByte(c)
			continue
		case c >= 'A' && c <= 'Z':
			c += 'a' - 'A'
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '_':
		default:
			return "", errInvalidChar
		}
		labelLen++
		if labelLen > MaxLabelLen {
			return "", errLongLabel
		}
		b.WriteByte(c)
	}
	if labelLen == 0 {
		return "", errEmptyLabel
	}
	if len(s)+2 > MaxWireLen {
		return "", errLongName
	}
	return b.String(), nil
}

// WireLen is the length of a normalised name in DNS wire format: a length
// byte per label, the label bytes, and the terminating zero byte.
func WireLen(name string) int { return len(name) + 2 }

// Wire encodes a normalised name in DNS wire format
// (example.com = 07 'example' 03 'com' 00).
func Wire(name string) []byte {
	return appendWire(make([]byte, 0, WireLen(name)), name)
}

// appendWire appends the wire form of a normalised name to b.
func appendWire(b []byte, name string) []byte {
	for name != "" {
		label, rest, _ := strings.Cut(name, ".")
		b = append(b, byte(len(label)))
		b = append(b, label...)
		name = rest
	}
	return append(b, 0)
}

// idnaProfile converts names written in Unicode to the ASCII form clients
// put on the wire. It is the UTS #46 lookup mapping (case, width and
// compatibility mappings, non-transitional like current browsers, so "ß"
// stays "ß" and becomes xn--...) with the Bidi and joiner checks: a list
// entry must match what a resolver is asked for after a browser or libidn2
// converted the name, and that is the lookup profile, not the stricter
// registration one (which refuses upper case and width variants a list
// author may well type). STD3 rules are off so that an underscore label
// next to a Unicode one is left to NormalizeName, which allows it.
var idnaProfile = idna.New(
	idna.MapForLookup(),
	idna.BidiRule(),
	idna.CheckJoiners(true),
	idna.CheckHyphens(true),
	idna.Transitional(false),
	idna.StrictDomainName(false),
	idna.VerifyDNSLength(false), // NormalizeName checks lengths, with its own messages
)

// entryName normalises a name from a list: ASCII names as NormalizeName
// does, names holding other characters first converted to punycode.
func entryName(s string) (string, error) {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			if !utf8.ValidString(s) {
				// idna would read the bad bytes as U+FFFD and carry on.
				return "", errors.New("invalid UTF-8")
			}
			a, err := idnaProfile.ToASCII(s)
			if err != nil {
				return "", fmt.Errorf("invalid internationalized name: %v", err)
			}
			return NormalizeName(a)
		}
	}
	return NormalizeName(s)
}
