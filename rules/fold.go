package rules

// Case folding. The kernel check folds every byte of the query name with
// b | 0x20 before the lookup, because a bitwise mask/xor is all that nft 1.0.6
// can still list (DESIGN.md §3: an exact fold needs a register-to-register OR
// that Debian 12's nft cannot print). That fold is not injective on names:
// bit 5 is also what tells a hyphen or digit from a length byte of 13 or
// 16-25, so a listed name can share its folded form with an ordinary name of
// the same length that is not one of its case variants (a "fold twin").
// The compiler finds every listed name that has a fold twin (ambiguous) and
// matches those with a per-name mask instead (letters folded, every other byte
// exact), so no ordinary name is over-blocked and no case variant passes.

const (
	foldMask = 0xdf
	foldXor  = 0x20
)

// foldByte is the kernel's fold of one byte: (b & 0xdf) ^ 0x20 == b | 0x20.
func foldByte(b byte) byte { return (b & foldMask) ^ foldXor }

// isFoldedChar reports whether f is the fold of a character that may appear
// inside a label (letters, digits, hyphen, underscore).
func isFoldedChar(f byte) bool {
	return f >= 'a' && f <= 'z' || f >= '0' && f <= '9' || f == '-' || f == '_'|0x20
}

// foldAmbiguous reports whether the folded form of wire (a name in wire
// format without its final zero byte) can be read as more than one label
// structure, i.e. whether some ordinary name other than a case variant of
// wire folds to the same bytes. Both names end where the zero byte is, so
// only parses that end exactly at len(wire) count.
func foldAmbiguous(wire []byte) bool {
	k := len(wire)
	// Fixed arrays: this runs once per listed name (a million times for a
	// big list), so it must not allocate.
	var f [MaxWireLen]byte
	for i, b := range wire {
		f[i] = foldByte(b)
	}
	// run[p]: how many folded label characters start at p.
	var run [MaxWireLen + 1]int
	for p := k - 1; p >= 0; p-- {
		if isFoldedChar(f[p]) {
			run[p] = run[p+1] + 1
		}
	}
	// ways[p]: parses of f[p:] as labels ending exactly at k, capped at 2.
	var ways [MaxWireLen + 1]int
	ways[k] = 1
	for p := k - 1; p >= 0; p-- {
		n := 0
		for _, v := range [2]int{int(f[p]), int(f[p] &^ 0x20)} {
			if v < 1 || v > MaxLabelLen || p+1+v > k || run[p+1] < v {
				continue
			}
			n += ways[p+1+v]
		}
		ways[p] = min(n, 2)
	}
	return ways[0] > 1
}

// exactMask is the per-byte mask for an ambiguous name: letters lose bit 5
// (so both cases compare equal), every other byte is compared exactly.
func exactMask(wire []byte) []byte {
	m := make([]byte, len(wire))
	for i, b := range wire {
		if b >= 'a' && b <= 'z' {
			m[i] = foldMask
		} else {
			m[i] = 0xff
		}
	}
	return m
}
