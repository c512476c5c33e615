//go:build linux

package nft

import (
	"fmt"

	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"nftdns/rules"
)

// reg maps rules.Reg(i), the i-th 4-byte register, to the kernel's register
// number NFT_REG32_00 + i. (Numbers 1-4 are the legacy 16-byte registers and
// 0 is the verdict register; rules never names those.)
func reg(r rules.Reg) uint32 { return unix.NFT_REG32_00 + uint32(r) }

// regVerdict is NFT_REG_VERDICT: a verdict map lookup writes its result
// there, which makes the lookup end the rule with the element's verdict.
const regVerdict = unix.NFT_REG_VERDICT

// convertExprs translates one rule's expressions. sets holds the sets of
// this batch, for their ids and to tell verdict maps.
func convertExprs(exprs []rules.Expr, sets map[string]*setPlan) ([]expr.Any, error) {
	out := make([]expr.Any, 0, len(exprs))
	for i, e := range exprs {
		x, err := convertExpr(e, sets)
		if err != nil {
			return nil, fmt.Errorf("expression %d (%T): %w", i, e, err)
		}
		out = append(out, x)
	}
	return out, nil
}

func convertExpr(e rules.Expr, sets map[string]*setPlan) (expr.Any, error) {
	switch e := e.(type) {
	case rules.Meta:
		var key expr.MetaKey
		switch e.Key {
		case rules.MetaNFProto:
			key = expr.MetaKeyNFPROTO
		case rules.MetaL4Proto:
			key = expr.MetaKeyL4PROTO
		case rules.MetaMark:
			key = expr.MetaKeyMARK
		case rules.MetaIif:
			key = expr.MetaKeyIIF
		case rules.MetaIifname:
			key = expr.MetaKeyIIFNAME
		default:
			return nil, fmt.Errorf("unknown meta key %d", e.Key)
		}
		return &expr.Meta{Key: key, Register: reg(e.Dst)}, nil

	case rules.MetaSet:
		if e.Key != rules.MetaMark {
			return nil, fmt.Errorf("meta key %d cannot be set", e.Key)
		}
		return &expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: reg(e.Src)}, nil

	case rules.PayloadWrite:
		if e.Base > rules.BaseInner {
			return nil, fmt.Errorf("unknown payload base %d", e.Base)
		}
		p := &expr.Payload{
			OperationType:  expr.PayloadWrite,
			SourceRegister: reg(e.Src),
			Base:           expr.PayloadBase(e.Base),
			Offset:         e.Offset,
			Len:            e.Len,
		}
		if e.L4Csum {
			// We want NFT_PAYLOAD_L4CSUM_PSEUDOHDR with no csum type (the
			// kernel then updates the transport checksum, leaves a zero
			// IPv4 UDP checksum alone and skips CHECKSUM_PARTIAL packets).
			// v0.3.0 sends the flags only together with a csum type, so
			// the type is inet aimed at the written field itself (the csum
			// offset counts from the start of the base, like Offset): the
			// kernel adjusts those two bytes and then overwrites them with
			// the new value, a no-op (nft_payload.c, nft_payload_set_eval,
			// Linux 6.18).
			if e.Len != 2 {
				return nil, fmt.Errorf("a checksummed write must be 2 bytes, not %d", e.Len)
			}
			p.CsumType = expr.CsumTypeInet
			p.CsumOffset = e.Offset
			p.CsumFlags = unix.NFT_PAYLOAD_L4CSUM_PSEUDOHDR
		}
		return p, nil

	case rules.Reject:
		switch e.Kind {
		case rules.RejectTCPReset:
			return &expr.Reject{Type: unix.NFT_REJECT_TCP_RST}, nil
		case rules.RejectPortUnreach:
			return &expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_PORT_UNREACH}, nil
		}
		return nil, fmt.Errorf("unknown reject kind %d", e.Kind)

	case rules.Dup:
		return &expr.Dup{RegAddr: reg(e.Addr), RegDev: reg(e.Dev), IsRegDevSet: true}, nil

	case rules.Payload:
		if e.Base > rules.BaseInner {
			return nil, fmt.Errorf("unknown payload base %d", e.Base)
		}
		// google/nftables v0.3.0 has no constant for the inner header base
		// (3, NFT_PAYLOAD_INNER_HEADER), but passes any value through.
		return &expr.Payload{
			OperationType: expr.PayloadLoad,
			DestRegister:  reg(e.Dst),
			Base:          expr.PayloadBase(e.Base),
			Offset:        e.Offset,
			Len:           e.Len,
		}, nil

	case rules.Cmp:
		ops := map[rules.CmpOp]expr.CmpOp{
			rules.CmpEq: expr.CmpOpEq, rules.CmpNeq: expr.CmpOpNeq,
			rules.CmpLt: expr.CmpOpLt, rules.CmpLte: expr.CmpOpLte,
			rules.CmpGt: expr.CmpOpGt, rules.CmpGte: expr.CmpOpGte,
		}
		op, ok := ops[e.Op]
		if !ok {
			return nil, fmt.Errorf("unknown cmp op %d", e.Op)
		}
		return &expr.Cmp{Op: op, Register: reg(e.Src), Data: e.Data}, nil

	case rules.Bitwise:
		return &expr.Bitwise{
			SourceRegister: reg(e.Src),
			DestRegister:   reg(e.Dst),
			Len:            e.Len,
			Mask:           e.Mask,
			Xor:            e.Xor,
		}, nil

	case rules.Lookup:
		l := &expr.Lookup{SourceRegister: reg(e.Src), SetName: e.Set, Invert: e.Invert}
		sp := sets[e.Set]
		if sp != nil {
			// The set is created in this same batch: the kernel resolves
			// the name among the batch's new sets, and the id as fallback.
			l.SetID = sp.id
		}
		if e.IsMap {
			l.IsDestRegSet = true
			l.DestRegister = reg(e.Dst)
			if sp != nil && sp.set.DataType == rules.TypeVerdict {
				l.DestRegister = regVerdict
			}
		}
		return l, nil

	case rules.Hash:
		// v0.3.0 omits NFTA_HASH_SEED when Seed is 0, and the kernel then
		// picks a random seed.
		return &expr.Hash{
			SourceRegister: reg(e.Src),
			DestRegister:   reg(e.Dst),
			Length:         e.Len,
			Modulus:        e.Modulus,
			Seed:           e.Seed,
			Type:           expr.HashTypeJenkins,
		}, nil

	case rules.Byteorder:
		if e.Size != 2 && e.Size != 4 && e.Size != 8 || e.Len == 0 || e.Len%e.Size != 0 {
			return nil, fmt.Errorf("byteorder of %d bytes in words of %d", e.Len, e.Size)
		}
		return &expr.Byteorder{SourceRegister: reg(e.Src), DestRegister: reg(e.Dst), Op: expr.ByteorderHton, Len: e.Len, Size: e.Size}, nil

	case rules.Immediate:
		if len(e.Data) == 0 || len(e.Data) > 16 {
			return nil, fmt.Errorf("immediate of %d bytes, want 1-16", len(e.Data))
		}
		return &expr.Immediate{Register: reg(e.Dst), Data: e.Data}, nil

	case rules.Numgen:
		return &expr.Numgen{Register: reg(e.Dst), Modulus: e.Modulus, Type: unix.NFT_NG_INCREMENTAL}, nil

	case rules.NAT:
		n := &expr.NAT{RegAddrMin: reg(e.Addr)}
		switch e.Kind {
		case rules.DNAT:
			n.Type = expr.NATTypeDestNAT
		case rules.SNAT:
			n.Type = expr.NATTypeSourceNAT
		default:
			return nil, fmt.Errorf("unknown nat kind %d", e.Kind)
		}
		switch e.Family {
		case rules.IPv4:
			n.Family = unix.NFPROTO_IPV4
		case rules.IPv6:
			n.Family = unix.NFPROTO_IPV6
		default:
			return nil, fmt.Errorf("unknown nat family %d", e.Family)
		}
		// Like nft 1.0.6 ("dnat ip to numgen inc mod 2 map {...}" sends
		// only addr_min and proto_min): the kernel copies min to max and sets
		// NF_NAT_RANGE_MAP_IPS / NF_NAT_RANGE_PROTO_SPECIFIED itself.
		if e.HasProto {
			n.RegProtoMin = reg(e.Proto)
		}
		return n, nil

	case rules.Masquerade:
		return &expr.Masq{}, nil

	case rules.Ct:
		var key expr.CtKey
		switch e.Key {
		case rules.CtState:
			key = expr.CtKeySTATE
		case rules.CtStatus:
			key = expr.CtKeySTATUS
		default:
			return nil, fmt.Errorf("unknown ct key %d", e.Key)
		}
		return &expr.Ct{Register: reg(e.Dst), Key: key}, nil

	case rules.Counter:
		if e.Name == "" {
			return &expr.Counter{}, nil
		}
		return &expr.Objref{Type: unix.NFT_OBJECT_COUNTER, Name: e.Name}, nil

	case rules.Log:
		// Only the prefix: a level together with a group is EINVAL, and nft
		// itself sends neither unless asked.
		l := &expr.Log{}
		if e.Prefix != "" {
			l.Key = 1 << unix.NFTA_LOG_PREFIX
			l.Data = []byte(e.Prefix)
		}
		if e.Group != 0 {
			l.Key |= 1 << unix.NFTA_LOG_GROUP
			l.Group = e.Group
		}
		return l, nil

	case rules.Limit:
		units := map[rules.RateUnit]expr.LimitTime{
			rules.PerSecond: expr.LimitTimeSecond, rules.PerMinute: expr.LimitTimeMinute,
			rules.PerHour: expr.LimitTimeHour, rules.PerDay: expr.LimitTimeDay,
		}
		u, ok := units[e.Unit]
		if !ok {
			return nil, fmt.Errorf("unknown rate unit %d", e.Unit)
		}
		return &expr.Limit{Type: expr.LimitTypePkts, Rate: e.Rate, Unit: u, Burst: e.Burst}, nil

	case rules.Verdict:
		v, err := convertVerdict(e)
		if err != nil {
			return nil, err
		}
		return v, nil
	}
	return nil, fmt.Errorf("unsupported expression")
}

func convertVerdict(v rules.Verdict) (*expr.Verdict, error) {
	switch v.Kind {
	case rules.Accept:
		return &expr.Verdict{Kind: expr.VerdictAccept}, nil
	case rules.Drop:
		return &expr.Verdict{Kind: expr.VerdictDrop}, nil
	case rules.Return:
		return &expr.Verdict{Kind: expr.VerdictReturn}, nil
	case rules.Jump, rules.Goto:
		if v.Chain == "" {
			return nil, fmt.Errorf("jump/goto without a chain")
		}
		k := expr.VerdictJump
		if v.Kind == rules.Goto {
			k = expr.VerdictGoto
		}
		return &expr.Verdict{Kind: k, Chain: v.Chain}, nil
	}
	return nil, fmt.Errorf("unknown verdict %d", v.Kind)
}
