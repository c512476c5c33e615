package rules

// This file is the ruleset as data: what the compiler produces and what the
// nft package programs into the kernel. It mirrors the kernel's nf_tables
// objects closely (registers, payload bases, set key lengths) so that the
// netlink layer is a mechanical translation, but it imports nothing that
// talks to the kernel.

// Reg is a kernel register in the 32-bit numbering: Reg(i) is the 4-byte
// register that starts at byte 4*i of the 64-byte register file
// (NFT_REG32_00 + i in the kernel). Loads longer than 4 bytes spill into the
// following registers.
type Reg uint8

// Base is a payload base.
type Base uint8

const (
	BaseLinkLayer Base = 0 // NFT_PAYLOAD_LL_HEADER
	BaseNetwork   Base = 1 // NFT_PAYLOAD_NETWORK_HEADER
	BaseTransport Base = 2 // NFT_PAYLOAD_TRANSPORT_HEADER ("@th")
	// BaseInner is the first byte after the transport header whatever its
	// options ("@ih"; kernel value 3, NFT_PAYLOAD_INNER_HEADER). For TCP it
	// is where the segment's payload starts.
	BaseInner Base = 3
)

// String gives the nft raw-payload spelling of the base.
func (b Base) String() string {
	switch b {
	case BaseLinkLayer:
		return "ll"
	case BaseNetwork:
		return "nh"
	case BaseTransport:
		return "th"
	case BaseInner:
		return "ih"
	}
	return "?"
}

// Expr is one nf_tables expression.
type Expr interface{ isExpr() }

// MetaKey names a meta expression key.
type MetaKey uint8

const (
	MetaNFProto MetaKey = iota // NFT_META_NFPROTO, 1 byte
	MetaL4Proto                // NFT_META_L4PROTO, 1 byte
	MetaMark                   // NFT_META_MARK, 4 bytes host order (skb->mark)
	MetaIif                    // NFT_META_IIF, 4 bytes: input interface index
	MetaIifname                // NFT_META_IIFNAME, 16 bytes, zero padded
)

// Immediate loads constant Data into Dst.
type Immediate struct {
	Dst  Reg
	Data []byte
}

// MetaSet writes Src to packet metadata (only MetaMark is settable here).
type MetaSet struct {
	Key MetaKey
	Src Reg
}

// PayloadWrite stores Len bytes from Src at Offset from Base. The writes
// nftdns makes either keep every checksum as it is (swapping two fields of
// equal size changes no ones' complement sum) or, with L4Csum, let the
// kernel fix the transport checksum (NFT_PAYLOAD_L4CSUM_PSEUDOHDR with no
// csum_type: the kernel then leaves a zero IPv4 UDP checksum, "none", at
// zero and skips CHECKSUM_PARTIAL packets, whose sum is finished later;
// csum_type inet would turn a zero UDP checksum into a wrong one, DESIGN §4).
type PayloadWrite struct {
	Base   Base
	Offset uint32
	Len    uint32
	Src    Reg
	L4Csum bool
}

// RejectKind is what a reject sends.
type RejectKind uint8

const (
	RejectTCPReset    RejectKind = iota // NFT_REJECT_TCP_RST
	RejectPortUnreach                   // NFT_REJECT_ICMPX_UNREACH, NFT_REJECT_ICMPX_PORT_UNREACH
)

// Reject drops the packet and answers it with a TCP reset or an ICMP/ICMPv6
// port unreachable (the inet family's icmpx). It ends the rule (a drop).
type Reject struct{ Kind RejectKind }

// Dup sends a copy of the packet to the address in Addr out of the
// interface whose index is in Dev (ip and ip6 families only: the kernel has
// no inet dup).
type Dup struct {
	Family Family
	Addr   Reg
	Dev    Reg
}

// Meta loads packet metadata into Dst.
type Meta struct {
	Key MetaKey
	Dst Reg
}

// Payload loads Len bytes at Offset from Base into Dst (and the registers
// after it). The kernel zeroes the rest of a partially written register.
type Payload struct {
	Base   Base
	Offset uint32 // bytes
	Len    uint32 // bytes
	Dst    Reg
}

// CmpOp is a comparison operator.
type CmpOp uint8

const (
	CmpEq CmpOp = iota
	CmpNeq
	CmpLt
	CmpLte
	CmpGt
	CmpGte
)

// Cmp compares len(Data) bytes at Src with Data (big-endian/memcmp order
// for the ordering operators). At most 16 bytes.
type Cmp struct {
	Op   CmpOp
	Src  Reg
	Data []byte
}

// Bitwise computes Dst = (Src & Mask) ^ Xor over Len bytes (at most 16).
type Bitwise struct {
	Src, Dst Reg
	Len      uint32
	Mask     []byte
	Xor      []byte
}

// Lookup looks the key at Src up in the named set; for a map (IsMap) the
// element's data is written to Dst. A miss ends the rule (Invert: a hit).
type Lookup struct {
	Set    string
	Src    Reg
	Dst    Reg
	IsMap  bool
	Invert bool
}

// Byteorder is the kernel's byteorder expression (hton) over Len bytes at
// Src, written to Dst, in words of Size bytes. On a little-endian machine
// it reverses each word: with Size 8 and Len 8 it reverses 8 bytes, which
// is how the suffix key is built from the end of the name. (The kernel
// takes larger Len with Size 8 but gets the bytes wrong: keep Len 8.)
type Byteorder struct {
	Src, Dst  Reg
	Len, Size uint32
}

// Hash is the kernel's jhash expression:
// Dst = reciprocal_scale(jhash(Src[0:Len], Seed), Modulus).
type Hash struct {
	Src, Dst Reg
	Len      uint32
	Modulus  uint32
	Seed     uint32
}

// Numgen writes an incrementing counter modulo Modulus to Dst
// ("numgen inc mod N").
type Numgen struct {
	Dst     Reg
	Modulus uint32
}

// NATKind is dnat or snat.
type NATKind uint8

const (
	DNAT NATKind = iota
	SNAT
)

// NAT rewrites the address (and port, when HasProto) from registers.
type NAT struct {
	Kind     NATKind
	Family   Family
	Addr     Reg
	Proto    Reg
	HasProto bool
}

// Masquerade is source NAT to the outgoing interface's address.
type Masquerade struct{}

// CtKey names a conntrack key.
type CtKey uint8

const (
	CtState  CtKey = iota // NFT_CT_STATE, 4 bytes host order
	CtStatus              // NFT_CT_STATUS, 4 bytes host order
)

// Ct loads a conntrack key into Dst.
type Ct struct {
	Key CtKey
	Dst Reg
}

// Counter counts packets and bytes; with a Name it updates the table's named
// counter object of that name, otherwise an anonymous counter in the rule.
type Counter struct{ Name string }

// Log writes a kernel log line with Prefix, or, with Group not 0, sends the
// packet to that nflog group (the kernel takes a level or a group, not
// both: DESIGN §5.7).
type Log struct {
	Prefix string
	Group  uint16
}

// Limit passes at most Rate packets per Unit with a Burst; over the limit
// the rule ends.
type Limit struct {
	Rate  uint64
	Unit  RateUnit
	Burst uint32
}

// RateUnit is the time unit of a Limit.
type RateUnit uint8

const (
	PerSecond RateUnit = iota
	PerMinute
	PerHour
	PerDay
)

// VerdictKind is a verdict.
type VerdictKind uint8

const (
	Accept VerdictKind = iota
	Drop
	Return
	Jump
	Goto
)

// Verdict ends the rule with a verdict; Chain is set for Jump and Goto.
type Verdict struct {
	Kind  VerdictKind
	Chain string
}

func (Meta) isExpr()         {}
func (Payload) isExpr()      {}
func (Cmp) isExpr()          {}
func (Bitwise) isExpr()      {}
func (Lookup) isExpr()       {}
func (Hash) isExpr()         {}
func (Numgen) isExpr()       {}
func (NAT) isExpr()          {}
func (Masquerade) isExpr()   {}
func (Ct) isExpr()           {}
func (Counter) isExpr()      {}
func (Log) isExpr()          {}
func (Limit) isExpr()        {}
func (Verdict) isExpr()      {}
func (MetaSet) isExpr()      {}
func (PayloadWrite) isExpr() {}
func (Reject) isExpr()       {}
func (Dup) isExpr()          {}
func (Immediate) isExpr()    {}
func (Byteorder) isExpr()    {}

// Family is an address family.
type Family uint8

const (
	IPv4 Family = 4
	IPv6 Family = 6
)

// DataType is the kernel datatype of a set key or map value. It only affects
// how nft prints elements, except TypeVerdict which makes a verdict map.
type DataType uint8

const (
	TypeNone DataType = iota
	// TypeRaw is nft's "integer"-like untyped key; such sets carry Typeof
	// fields so nft can print them.
	TypeRaw
	TypeInteger
	TypeIPv4Addr
	TypeIPv6Addr
	TypeInetService
	TypeVerdict
	TypeIPv4AddrPort // ipv4_addr . inet_service
	TypeIPv6AddrPort // ipv6_addr . inet_service
)

// Field describes one component of a set key for the set's typeof user data,
// as a raw payload "@base,offset,len" in bits.
type Field struct {
	Base       Base
	OffsetBits uint32
	LenBits    uint32
}

// Set is a named set or map in the table.
type Set struct {
	Name    string
	Comment string
	KeyType DataType
	KeyLen  uint32 // bytes, after padding each concatenated field to 4 bytes
	// Typeof, when not empty, describes the key (raw payload fields, in
	// order) for nft's typeof user data.
	Typeof   []Field
	DataType DataType // TypeNone for a plain set
	DataLen  uint32
	Interval bool
	Elements []Element
	// Decl overrides the type line Render prints for the set, for keys nft
	// can only express as typeof of a non-payload expression (numgen).
	Decl string
}

// IsMap reports whether the set maps keys to data or verdicts.
func (s *Set) IsMap() bool { return s.DataType != TypeNone }

// Element is a set element. For interval sets Key is the first value of the
// range and KeyEnd the first value after it (half-open).
type Element struct {
	Key     []byte
	KeyEnd  []byte
	Data    []byte
	Verdict *Verdict
}

// Hook names a netfilter hook.
type Hook string

const (
	HookNone        Hook = ""
	HookPrerouting  Hook = "prerouting"
	HookInput       Hook = "input"
	HookForward     Hook = "forward"
	HookOutput      Hook = "output"
	HookPostrouting Hook = "postrouting"
)

// ChainType is a base chain's type.
type ChainType string

const (
	ChainFilter ChainType = "filter"
	ChainNAT    ChainType = "nat"
)

// Chain is a chain; base chains have a Hook.
type Chain struct {
	Name     string
	Hook     Hook
	Type     ChainType
	Priority int32
	Comment  string
	Rules    []Rule
}

// Rule is one rule: its expressions and the same rule in nft syntax.
type Rule struct {
	Exprs []Expr
	Text  string
}

// Ruleset is everything nftdns puts in the kernel: one inet table.
type Ruleset struct {
	Table    string // inet family
	Comment  string
	Counters []string // named counter objects
	Sets     []*Set   // in dependency order (before the rules using them)
	Chains   []*Chain // regular chains before the base chains that jump to them
	// Aux are the small ip and ip6 tables of the same name that send the
	// answers the inet table built (the kernel has no inet dup). Empty when
	// no list answers; an apply then deletes any left over.
	Aux   []*AuxTable
	Stats Stats
}

// AuxTable is a table of another family with chains only (no sets or
// counters); the apply replaces it whole.
type AuxTable struct {
	Family Family // IPv4: table ip; IPv6: table ip6
	Chains []*Chain
}

// Stats describes what the compiler made of the lists.
type Stats struct {
	Names     int // distinct names listed
	Ambiguous int // names matched with an exact mask because of a fold twin
	Lengths   int // distinct wire lengths
	Long      int // names longer than 64 bytes in wire format (staged lookups)
	MaxWire   int // longest wire length listed
	// Suffix entries and exceptions left after precedence (see suffix.go),
	// and what Resolve folded away.
	Suffixes   int
	Exceptions int
	Resolve    ResolveStats
	// SuffixResidual counts block suffix entries the kernel can match a
	// little too widely (README "Suffix entries", limits): a fold twin, or
	// a first label of 45 or 48-57 characters.
	SuffixResidual int
}

// Set returns the named set, or nil.
func (rs *Ruleset) Set(name string) *Set {
	for _, s := range rs.Sets {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// ElementCount is the number of elements in all sets.
func (rs *Ruleset) ElementCount() int {
	n := 0
	for _, s := range rs.Sets {
		n += len(s.Elements)
	}
	return n
}
