package harness

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
)

// WireLen is the length of name in DNS wire format: each label plus its
// length byte, plus the final zero byte.
func WireLen(name string) int {
	name = strings.TrimSuffix(name, ".")
	if name == "" {
		return 1
	}
	return len(name) + 2
}

// LongName returns a name of exactly wireLen wire bytes that ends in
// suffix, padded in front with labels of the letter fill (at most 63 bytes
// each). It panics if that is impossible (wireLen too small or above 255),
// since callers pass constants.
func LongName(wireLen int, suffix string, fill byte) string {
	rest := wireLen - WireLen(suffix)
	if wireLen > 255 || rest < 2 {
		panic(fmt.Sprintf("LongName(%d, %q): impossible length", wireLen, suffix))
	}
	var labels []string
	for rest > 0 {
		n := min(rest, 64) // a label of n-1 bytes plus its length byte
		if rest-n == 1 {   // a leftover of 1 byte cannot be a label
			n--
		}
		labels = append(labels, strings.Repeat(string(fill), n-1))
		rest -= n
	}
	return strings.Join(append(labels, suffix), ".")
}

// Hash8 is a short hex digest of s, for ETags and the like.
func Hash8(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:4])
}
