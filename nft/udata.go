//go:build linux

package nft

import (
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"

	"nftdns/rules"
)

// User data is opaque to the kernel: nft (libnftnl) stores its own TLVs in
// it (1-byte type, 1-byte length, little-endian integers) and reads them back
// to print tables, chains and sets. google/nftables v0.3.0 writes only a set's
// key byte order and comment, so the typeof TLVs are built here. The layouts
// below were captured from `nft --debug=mnl` of nft 1.0.6 (Debian 12).

// Table and chain user data types (libnftnl udata.h).
const (
	udataTableComment = 0 // NFTNL_UDATA_TABLE_COMMENT
	udataChainComment = 0 // NFTNL_UDATA_CHAIN_COMMENT
)

// udataRuleApplyID is the rule user data TLV type that carries an Apply's
// random id, so that after lost acknowledgements Apply can tell its own
// commit from someone else's (see resolveUnknown). libnftnl names rule
// types 0 (comment) and 1 (ebtables policy); nft 1.0.6 skips any other
// type when it parses rule user data, so the id is never printed.
const udataRuleApplyID = 0x6e

// maxComment is nft's NFTNL_UDATA_COMMENT_MAXLEN: nft refuses longer
// comments, and a TLV length is one byte anyway.
const maxComment = 128

// Typeof TLVs (nft include/expression.h and the *_build_udata functions).
const (
	typeofExpr = 0 // NFTNL_UDATA_SET_TYPEOF_EXPR: u32 expression type
	typeofData = 1 // NFTNL_UDATA_SET_TYPEOF_DATA: nested, per expression type

	// Inside the data of a payload expression.
	payloadDesc   = 0 // NFTNL_UDATA_SET_KEY_PAYLOAD_DESC: protocol description id
	payloadType   = 1 // NFTNL_UDATA_SET_KEY_PAYLOAD_TYPE: header field id
	payloadBase   = 2 // NFTNL_UDATA_SET_KEY_PAYLOAD_BASE (raw payloads only)
	payloadOffset = 3 // NFTNL_UDATA_SET_KEY_PAYLOAD_OFFSET, bits
	payloadLen    = 4 // NFTNL_UDATA_SET_KEY_PAYLOAD_LEN, bits

	// Inside the data of a concatenation: one nest per component, numbered
	// from 0, each holding the component's expression type and data.
	concatSubType = 0 // NFTNL_UDATA_SET_KEY_CONCAT_SUB_TYPE
	concatSubData = 1 // NFTNL_UDATA_SET_KEY_CONCAT_SUB_DATA
)

// nft expression types (enum expr_types in nft 1.0.6).
const (
	exprVerdict = 1
	exprPayload = 7
	exprMeta    = 9
	exprConcat  = 13
	exprNumgen  = 23
)

// Inside the data of a meta expression: NFTNL_UDATA_META_KEY. Inside the
// data of a numgen expression: NFTNL_UDATA_NUMGEN_{TYPE,MODULUS,OFFSET}.
const (
	metaKey       = 0
	numgenType    = 0
	numgenModulus = 1
	numgenOffset  = 2
)

// nft protocol description and header field ids used for map data typeof.
const (
	protoDescTH  = 11 // PROTO_DESC_TH ("th")
	protoDescIP  = 12 // PROTO_DESC_IP
	protoDescIP6 = 13 // PROTO_DESC_IP6
	thdrDport    = 2  // THDR_DPORT
	iphdrDaddr   = 12 // IPHDR_DADDR
	ip6hdrDaddr  = 9  // IP6HDR_DADDR
)

// Byte order values of NFTNL_UDATA_SET_{KEY,DATA}BYTEORDER (nft enum
// byteorder). nft prints integers in this order, so it matters for
// host-endian keys such as numgen or jhash results.
const (
	byteorderInvalid = 0 // what nft sends for concatenations
	byteorderHost    = 1
	byteorderBig     = 2
)

func tlv(b []byte, typ uint8, data []byte) ([]byte, error) {
	if len(data) > 255 {
		return nil, fmt.Errorf("user data TLV %d is %d bytes, the limit is 255", typ, len(data))
	}
	return userdata.Append(b, userdata.Type(typ), data), nil
}

func tlvU32(b []byte, typ uint8, v uint32) []byte {
	return userdata.Append(b, userdata.Type(typ), binary.LittleEndian.AppendUint32(nil, v))
}

// commentUdata is the user data holding only a comment (tables, chains).
func commentUdata(typ uint8, comment string) ([]byte, error) {
	if len(comment) > maxComment {
		return nil, fmt.Errorf("comment is %d bytes, nft allows %d", len(comment), maxComment)
	}
	return tlv(nil, typ, append([]byte(comment), 0))
}

// rawPayloadTypeof is the typeof expression of "@base,offset,len".
func rawPayloadTypeof(f rules.Field) (exprType uint32, data []byte) {
	data = tlvU32(data, payloadDesc, 0) // proto_unknown: a raw payload
	data = tlvU32(data, payloadType, 0)
	// nft's enum proto_bases starts with PROTO_BASE_INVALID = 0, so its
	// values are the kernel's payload base + 1 (@th is 3, @ih is 4).
	data = tlvU32(data, payloadBase, uint32(f.Base)+1)
	data = tlvU32(data, payloadOffset, f.OffsetBits)
	data = tlvU32(data, payloadLen, f.LenBits)
	return exprPayload, data
}

// fieldTypeof is the typeof expression of a named header field.
func fieldTypeof(desc, field uint32) (exprType uint32, data []byte) {
	data = tlvU32(data, payloadDesc, desc)
	data = tlvU32(data, payloadType, field)
	return exprPayload, data
}

// metaMarkTypeof is "meta mark": the stand-in nft can print for a 4-byte
// host-order integer (nft 1.0.6 prints a typeof-less integer key as
// "type 0" and cannot read such a listing back).
func metaMarkTypeof() typeofPart {
	return typeofPart{exprMeta, tlvU32(nil, metaKey, unix.NFT_META_MARK)}
}

// numgenTypeof is "numgen inc mod m".
func numgenTypeof(m uint32) typeofPart {
	d := tlvU32(nil, numgenType, unix.NFT_NG_INCREMENTAL)
	d = tlvU32(d, numgenModulus, m)
	d = tlvU32(d, numgenOffset, 0)
	return typeofPart{exprNumgen, d}
}

type typeofPart struct {
	exprType uint32
	data     []byte
}

// typeofUdata encodes one expression, or a concatenation of several.
func typeofUdata(parts []typeofPart) ([]byte, error) {
	if len(parts) == 1 {
		b := tlvU32(nil, typeofExpr, parts[0].exprType)
		return tlv(b, typeofData, parts[0].data)
	}
	var nest []byte
	for i, p := range parts {
		sub := tlvU32(nil, concatSubType, p.exprType)
		sub, err := tlv(sub, concatSubData, p.data)
		if err != nil {
			return nil, err
		}
		if nest, err = tlv(nest, uint8(i), sub); err != nil {
			return nil, err
		}
	}
	b := tlvU32(nil, typeofExpr, exprConcat)
	return tlv(b, typeofData, nest)
}

// keyTypeof describes a set key for nft: the raw payload fields in order,
// or for an integer key what writes it (numgen with modulus ngMod when the
// rules look the set up with a numgen result, else "meta mark"). Named key
// types need no typeof.
func keyTypeof(s *rules.Set, ngMod uint32) ([]byte, bool, error) {
	var parts []typeofPart
	switch {
	case len(s.Typeof) > 0:
		for _, f := range s.Typeof {
			var p typeofPart
			p.exprType, p.data = rawPayloadTypeof(f)
			parts = append(parts, p)
		}
	case s.KeyType == rules.TypeInteger && s.KeyLen == 4 && ngMod > 0:
		parts = append(parts, numgenTypeof(ngMod))
	case s.KeyType == rules.TypeInteger && s.KeyLen == 4:
		parts = append(parts, metaMarkTypeof())
	default:
		return nil, false, nil
	}
	b, err := typeofUdata(parts)
	return b, true, err
}

// dataTypeof describes map data for nft. nft 1.0.6 uses a map's key typeof
// only when the data has one too, so a map with a typeof key needs this.
// The expressions chosen print what the data is used for (dnat targets are
// a destination address and port).
func dataTypeof(s *rules.Set) ([]byte, bool, error) {
	var parts []typeofPart
	add := func(e uint32, d []byte) { parts = append(parts, typeofPart{e, d}) }
	switch s.DataType {
	case rules.TypeVerdict:
		// nft sends an empty verdict expression.
		b := tlvU32(nil, typeofExpr, exprVerdict)
		b, err := tlv(b, typeofData, nil)
		return b, true, err
	case rules.TypeIPv4Addr:
		add(fieldTypeof(protoDescIP, iphdrDaddr))
	case rules.TypeIPv6Addr:
		add(fieldTypeof(protoDescIP6, ip6hdrDaddr))
	case rules.TypeInetService:
		add(fieldTypeof(protoDescTH, thdrDport))
	case rules.TypeIPv4AddrPort:
		add(fieldTypeof(protoDescIP, iphdrDaddr))
		add(fieldTypeof(protoDescTH, thdrDport))
	case rules.TypeIPv6AddrPort:
		add(fieldTypeof(protoDescIP6, ip6hdrDaddr))
		add(fieldTypeof(protoDescTH, thdrDport))
	case rules.TypeInteger:
		if s.DataLen != 4 {
			return nil, false, nil
		}
		parts = append(parts, metaMarkTypeof())
	default:
		return nil, false, nil
	}
	b, err := typeofUdata(parts)
	return b, true, err
}

// numgenMaps finds the sets the rules look up with a "numgen inc mod N"
// result, and N, so their listing can say "typeof numgen inc mod N". A set
// looked up with different moduli gets 0.
func numgenMaps(rs *rules.Ruleset) map[string]uint32 {
	out := map[string]uint32{}
	for _, ch := range rs.Chains {
		for _, r := range ch.Rules {
			regs := map[rules.Reg]uint32{} // register -> modulus it holds
			for _, e := range r.Exprs {
				switch e := e.(type) {
				case rules.Numgen:
					regs[e.Dst] = e.Modulus
					continue
				case rules.Lookup:
					if m, ok := regs[e.Src]; ok {
						if prev, seen := out[e.Set]; seen && prev != m {
							m = 0
						}
						out[e.Set] = m
					}
					if e.IsMap {
						delete(regs, e.Dst)
					}
				case rules.Meta:
					delete(regs, e.Dst)
				case rules.Payload:
					delete(regs, e.Dst)
				case rules.Ct:
					delete(regs, e.Dst)
				case rules.Hash:
					delete(regs, e.Dst)
				case rules.Bitwise:
					delete(regs, e.Dst)
				}
			}
		}
	}
	return out
}

// udataGet returns the data of the first TLV of type typ in user data b.
// Unlike google/nftables v0.3.0 userdata.Get it does not panic on user data
// that others wrote and that does not parse.
func udataGet(b []byte, typ uint8) ([]byte, bool) {
	for len(b) >= 2 {
		l := int(b[1])
		if len(b) < 2+l {
			return nil, false
		}
		if b[0] == typ {
			return b[2 : 2+l], true
		}
		b = b[2+l:]
	}
	return nil, false
}

// udataString returns a NUL-terminated string TLV (a comment), or "".
func udataString(b []byte, typ uint8) string {
	d, _ := udataGet(b, typ)
	return strings.TrimSuffix(string(d), "\x00")
}
