//go:build linux

package nft

import (
	"fmt"

	"github.com/google/nftables"

	"nftdns/rules"
)

// datatype is what the kernel and nft need to know about a key or data type.
type datatype struct {
	magic uint32 // NFTA_SET_KEY_TYPE / NFTA_SET_DATA_TYPE: nft's datatype id
	len   uint32 // fixed length in bytes; 0 = any (integers, raw keys)
	order uint32 // nft byte order user data
}

var (
	ipv4AddrPort = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetService)
	ipv6AddrPort = nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeInetService)
)

// lookupDatatype maps a rules datatype to nft's. fields is the number of
// typeof fields of a raw key (a concatenation of integers when > 1).
func lookupDatatype(t rules.DataType, fields int) (datatype, error) {
	switch t {
	case rules.TypeRaw:
		// nft 1.0.6 sends "integer" (or a concatenation of integers) for
		// most typeof raw-payload keys (for some, e.g. a 96-bit non-interval
		// key, it sends 0); the typeof user data is what nft prints, so any
		// of them lists the same. Raw payloads are network (big-endian)
		// bytes.
		if fields <= 1 {
			return datatype{magic: nftables.TypeInteger.GetNFTMagic(), order: byteorderBig}, nil
		}
		parts := make([]nftables.SetDatatype, fields)
		for i := range parts {
			parts[i] = nftables.TypeInteger
		}
		ct, err := nftables.ConcatSetType(parts...)
		if err != nil {
			return datatype{}, fmt.Errorf("%d typeof fields: %w", fields, err)
		}
		return datatype{magic: ct.GetNFTMagic(), order: byteorderInvalid}, nil
	case rules.TypeInteger:
		// Integers in this ruleset come from numgen and jhash, which the
		// kernel writes in host byte order.
		return datatype{magic: nftables.TypeInteger.GetNFTMagic(), order: byteorderHost}, nil
	case rules.TypeIPv4Addr:
		return fixed(nftables.TypeIPAddr, byteorderBig), nil
	case rules.TypeIPv6Addr:
		return fixed(nftables.TypeIP6Addr, byteorderBig), nil
	case rules.TypeInetService:
		return fixed(nftables.TypeInetService, byteorderBig), nil
	case rules.TypeIPv4AddrPort:
		return fixed(ipv4AddrPort, byteorderInvalid), nil
	case rules.TypeIPv6AddrPort:
		return fixed(ipv6AddrPort, byteorderInvalid), nil
	case rules.TypeVerdict:
		return datatype{magic: nftables.TypeVerdict.GetNFTMagic()}, nil
	}
	return datatype{}, fmt.Errorf("unsupported datatype %d", t)
}

func fixed(t nftables.SetDatatype, order uint32) datatype {
	return datatype{magic: t.GetNFTMagic(), len: t.Bytes, order: order}
}

// typeName is nft's name for a rules datatype, for errors.
func typeName(t rules.DataType) string {
	names := map[rules.DataType]string{
		rules.TypeNone: "none", rules.TypeRaw: "raw", rules.TypeInteger: "integer",
		rules.TypeIPv4Addr: "ipv4_addr", rules.TypeIPv6Addr: "ipv6_addr",
		rules.TypeInetService: "inet_service", rules.TypeVerdict: "verdict",
		rules.TypeIPv4AddrPort: "ipv4_addr . inet_service", rules.TypeIPv6AddrPort: "ipv6_addr . inet_service",
	}
	if n, ok := names[t]; ok {
		return n
	}
	return fmt.Sprintf("type %d", t)
}
