package rules

import (
	"encoding/binary"
	"fmt"
	"strings"
)

// This file holds what happens to a query once its name matched a list:
// one outcome chain per list (counters, the rate-limited log, the action),
// the chains that turn a query into an NXDOMAIN or REFUSED answer in place,
// and the small ip/ip6 tables that send those answers (DESIGN.md §4).

// AnswerMark is the packet mark the inet table puts on a query it turned
// into an answer; the ip/ip6 answer chains send exactly those packets back
// and drop them. The original packet is dropped right after, so the mark
// never leaves the box; the copy that is sent has its mark cleared.
const AnswerMark = 0x6e667464 // "nftd"

// auxPriority runs the answer chains right after the inet table's
// prerouting-raw chain (-300) and still before conntrack (-200).
const auxPriority = -299

// LogPrefix is the log prefix (and nflog prefix) of a list's matches:
// "nftdns ACTION list N: ". ParseLogPrefix reads it back.
func LogPrefix(action string, list int) string {
	return fmt.Sprintf("nftdns %s list %d: ", action, list)
}

// ParseLogPrefix returns the action and list index of a LogPrefix.
func ParseLogPrefix(p string) (action string, list int, ok bool) {
	var a string
	var n int
	if _, err := fmt.Sscanf(strings.TrimSpace(p), "nftdns %s list %d:", &a, &n); err != nil {
		return "", 0, false
	}
	return a, n, true
}

// outcomeChain is the chain that a name match of list `list` goes to (with
// goto) from the length chains, the verification chains and the verdict
// maps. One chain serves both transports (verdict maps are shared by the
// UDP and TCP length chains, so their verdicts cannot depend on t); it
// tells them apart where the action differs.
func (c *compiler) outcomeChain(t transport, list int) string {
	_ = t
	return fmt.Sprintf("list-%d", list)
}

func answerChain(action string) string { return "answer-" + action }

// listAction is the action of list i.
func (c *compiler) listAction(l *List) string {
	if l.Action != "" {
		return l.Action
	}
	return c.s.Action
}

// addOutcomeChains makes one outcome chain per list and the answer chains
// and tables the lists' actions need.
func (c *compiler) addOutcomeChains(lists []*List) {
	answers := map[string]bool{}
	for i, l := range lists {
		a := c.listAction(l)
		ch := &Chain{Name: c.outcomeChain(udp, i), Comment: fmt.Sprintf("names of list %d: count, log (rate-limited), %s", i, a)}
		if a != ActionLog {
			for _, t := range []transport{udp, tcp} {
				for _, f := range []Family{IPv4, IPv6} {
					ch.Rules = append(ch.Rules, newRule().nfproto(f).l4proto(t).counter(CounterName(CounterBlocked, familyName(f), t.name)).rule())
				}
			}
		}
		ch.Rules = append(ch.Rules, newRule().counter(ActionCounter(a)).counter(ListCounter(i)).rule())
		lim := c.s.LogRate
		log := Log{Prefix: LogPrefix(a, i), Group: c.s.NflogGroup}
		logText := fmt.Sprintf("log prefix %q", log.Prefix)
		if log.Group != 0 {
			logText += fmt.Sprintf(" group %d", log.Group)
		}
		ch.Rules = append(ch.Rules, newRule().
			add(fmt.Sprintf("limit rate %s burst %d packets", lim, c.s.LogBurst), Limit{Rate: lim.N, Unit: lim.Unit, Burst: c.s.LogBurst}).
			add(logText, log).rule())
		switch a {
		case ActionDrop:
			ch.Rules = append(ch.Rules, newRule().verdict(Drop, "").rule())
		case ActionReject:
			ch.Rules = append(ch.Rules,
				newRule().l4proto(tcp).add("reject with tcp reset", Reject{Kind: RejectTCPReset}).rule(),
				newRule().add("reject with icmpx port-unreachable", Reject{Kind: RejectPortUnreach}).rule())
		case ActionNXDomain, ActionRefused:
			// Only UDP can be answered in place (a TCP answer would need
			// the connection's state); a TCP query gets a reset at once.
			ch.Rules = append(ch.Rules, newRule().l4proto(tcp).add("reject with tcp reset", Reject{Kind: RejectTCPReset}).rule())
			// The answer goes back out of the interface the query came in
			// on, and only if that is a client-facing one: a query that
			// came in elsewhere is dropped.
			for _, ifn := range c.s.Interfaces {
				ch.Rules = append(ch.Rules, newRule().iifname(ifn).verdict(Goto, answerChain(a)).rule())
			}
			ch.Rules = append(ch.Rules, newRule().verdict(Drop, "").rule())
			answers[a] = true
		case ActionLog:
			// Monitor mode: back to the query chain's caller, which counts
			// the query as passed and lets it go to the upstreams.
			ch.Rules = append(ch.Rules, newRule().verdict(Return, "").rule())
		}
		c.rs.Chains = append(c.rs.Chains, ch)
	}
	for _, a := range Actions {
		if answers[a] {
			c.rs.Chains = append(c.rs.Chains, answerRewriteChain(a))
		}
	}
	if len(answers) > 0 {
		c.rs.Aux = []*AuxTable{auxTable(IPv4), auxTable(IPv6)}
	}
}

// rcode is the DNS RCODE an answering action sets.
func rcode(action string) byte {
	if action == ActionRefused {
		return 5
	}
	return 3 // NXDOMAIN
}

// answerChain2 turns the UDP query in the packet into an answer to it,
// in place: swap the addresses and the ports, set the header flags, mark
// it for the ip/ip6 answer chain, and accept it (to that chain, which
// runs next). Each swap loads both fields into two registers before
// writing either. A swap keeps every checksum valid (the ones' complement
// sum of the same 16-bit words in another order is the same); only the
// flags write changes the UDP checksum, which the kernel updates.
//
// The answer is the query with QR and RA set, OPCODE and AA/TC/Z/AD
// cleared, RD and CD kept and the RCODE set: (flags & 0x0110) ^ 0x8080|rcode.
// Everything after the header is echoed: the question and any EDNS OPT
// record (a query's answer and authority counts are 0: the header gate
// does not check them, a query that has some gets them echoed too).
func answerRewriteChain(action string) *Chain {
	ch := &Chain{Name: answerChain(action), Comment: fmt.Sprintf("turn the query into a %s answer and mark it to be sent back", strings.ToUpper(action))}
	ch.Rules = append(ch.Rules,
		newRule().nfproto(IPv4).add("ip saddr . ip daddr set ip daddr . ip saddr",
			Payload{Base: BaseNetwork, Offset: 12, Len: 4, Dst: 0},
			Payload{Base: BaseNetwork, Offset: 16, Len: 4, Dst: 1},
			PayloadWrite{Base: BaseNetwork, Offset: 12, Len: 4, Src: 1},
			PayloadWrite{Base: BaseNetwork, Offset: 16, Len: 4, Src: 0}).rule(),
		newRule().nfproto(IPv6).add("ip6 saddr . ip6 daddr set ip6 daddr . ip6 saddr",
			Payload{Base: BaseNetwork, Offset: 8, Len: 16, Dst: 0},
			Payload{Base: BaseNetwork, Offset: 24, Len: 16, Dst: 4},
			PayloadWrite{Base: BaseNetwork, Offset: 8, Len: 16, Src: 4},
			PayloadWrite{Base: BaseNetwork, Offset: 24, Len: 16, Src: 0}).rule())
	xor := []byte{0x80, 0x80 | rcode(action)}
	ch.Rules = append(ch.Rules, newRule().
		add("udp sport . udp dport set udp dport . udp sport",
			Payload{Base: BaseTransport, Offset: 0, Len: 2, Dst: 0},
			Payload{Base: BaseTransport, Offset: 2, Len: 2, Dst: 1},
			PayloadWrite{Base: BaseTransport, Offset: 0, Len: 2, Src: 1},
			PayloadWrite{Base: BaseTransport, Offset: 2, Len: 2, Src: 0}).
		add(fmt.Sprintf("@th,%d,16 set @th,%d,16 & 0x0110 ^ 0x%x", udp.flagsOff*8, udp.flagsOff*8, xor),
			Payload{Base: BaseTransport, Offset: udp.flagsOff, Len: 2, Dst: 0},
			Bitwise{Src: 0, Dst: 0, Len: 2, Mask: []byte{0x01, 0x10}, Xor: xor},
			PayloadWrite{Base: BaseTransport, Offset: udp.flagsOff, Len: 2, Src: 0, L4Csum: true}).
		add(fmt.Sprintf("meta mark set 0x%x", AnswerMark),
			Immediate{Dst: 0, Data: binary.NativeEndian.AppendUint32(nil, AnswerMark)},
			MetaSet{Key: MetaMark, Src: 0}).
		verdict(Accept, "").rule())
	return ch
}

// auxTable is the ip or ip6 table whose chain sends the marked answers
// back to the client, out of the interface the query came in on, and drops
// the original. The kernel's dup routes the copy to the address given (the
// answer's destination, the client) and sends it through the output path,
// so link-layer addresses come from the neighbour table; in prerouting it
// also lowers the TTL/hop limit by one.
func auxTable(f Family) *AuxTable {
	kw, daddr, n, dev := "ip", uint32(16), uint32(4), Reg(1)
	if f == IPv6 {
		kw, daddr, n, dev = "ip6", 24, 16, 4
	}
	mark := binary.NativeEndian.AppendUint32(nil, AnswerMark)
	ch := &Chain{Name: "answer", Hook: HookPrerouting, Type: ChainFilter, Priority: auxPriority,
		Comment: "send the answers the inet table built back to the client"}
	ch.Rules = append(ch.Rules, newRule().
		add(fmt.Sprintf("meta mark 0x%x", AnswerMark), Meta{Key: MetaMark, Dst: 0}, Cmp{Op: CmpEq, Src: 0, Data: mark}).
		add("meta mark set 0x0", Immediate{Dst: 0, Data: make([]byte, 4)}, MetaSet{Key: MetaMark, Src: 0}).
		add(fmt.Sprintf("dup to %s daddr device iif", kw),
			Payload{Base: BaseNetwork, Offset: daddr, Len: n, Dst: 0},
			Meta{Key: MetaIif, Dst: dev},
			Dup{Family: f, Addr: 0, Dev: dev}).
		verdict(Drop, "").rule())
	return &AuxTable{Family: f, Chains: []*Chain{ch}}
}

// iifname matches the input interface's name.
func (r *rb) iifname(name string) *rb {
	data := make([]byte, 16)
	copy(data, name)
	return r.add(fmt.Sprintf("iifname %q", name), Meta{Key: MetaIifname, Dst: 0}, Cmp{Op: CmpEq, Src: 0, Data: data})
}
