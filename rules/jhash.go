package rules

import "math/bits"

// jhash is the kernel's jhash() (include/linux/jhash.h, Bob Jenkins'
// lookup3) as used by the nft hash expression, reading words in the host's
// byte order exactly as the kernel does on a little-endian machine.
func jhash(k []byte, initval uint32) uint32 {
	length := uint32(len(k))
	a := 0xdeadbeef + length + initval
	b, c := a, a
	le := func(p []byte) uint32 {
		return uint32(p[0]) | uint32(p[1])<<8 | uint32(p[2])<<16 | uint32(p[3])<<24
	}
	for len(k) > 12 {
		a += le(k)
		b += le(k[4:])
		c += le(k[8:])
		// __jhash_mix
		a -= c
		a ^= bits.RotateLeft32(c, 4)
		c += b
		b -= a
		b ^= bits.RotateLeft32(a, 6)
		a += c
		c -= b
		c ^= bits.RotateLeft32(b, 8)
		b += a
		a -= c
		a ^= bits.RotateLeft32(c, 16)
		c += b
		b -= a
		b ^= bits.RotateLeft32(a, 19)
		a += c
		c -= b
		c ^= bits.RotateLeft32(b, 4)
		b += a
		k = k[12:]
	}
	if len(k) == 0 {
		return c
	}
	var t [12]byte
	copy(t[:], k)
	a += le(t[0:])
	b += le(t[4:])
	c += le(t[8:])
	// __jhash_final
	c ^= b
	c -= bits.RotateLeft32(b, 14)
	a ^= c
	a -= bits.RotateLeft32(c, 11)
	b ^= a
	b -= bits.RotateLeft32(a, 25)
	c ^= b
	c -= bits.RotateLeft32(b, 16)
	a ^= c
	a -= bits.RotateLeft32(c, 4)
	b ^= a
	b -= bits.RotateLeft32(a, 14)
	c ^= b
	c -= bits.RotateLeft32(b, 24)
	return c
}

// nftHash is what the nft hash expression writes: jhash scaled into
// [0, modulus) with the kernel's reciprocal_scale.
func nftHash(k []byte, seed, modulus uint32) uint32 {
	return uint32((uint64(jhash(k, seed)) * uint64(modulus)) >> 32)
}
