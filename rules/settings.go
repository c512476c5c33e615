package rules

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// DNSPort is the port clients send queries to and the default upstream port.
const DNSPort = 53

// Defaults used when a setting is left zero.
const (
	DefaultTable    = "nftdns"
	DefaultAction   = "drop"
	DefaultLogBurst = 100
)

// DefaultLogRate is 1/second, as in the classic ruleset.
var DefaultLogRate = Rate{N: 1, Unit: PerSecond}

// Block actions (Settings.Action, List.Action).
const (
	ActionDrop     = "drop"     // drop silently: the client times out
	ActionReject   = "reject"   // ICMP port unreachable (UDP), TCP reset (TCP)
	ActionNXDomain = "nxdomain" // an NXDOMAIN answer built in the kernel (UDP); TCP reset
	ActionRefused  = "refused"  // a REFUSED answer built in the kernel (UDP); TCP reset
	ActionLog      = "log"      // monitor mode: count and log, block nothing
)

// Actions lists the accepted block actions.
var Actions = []string{ActionDrop, ActionReject, ActionNXDomain, ActionRefused, ActionLog}

// Answers reports whether an action answers queries in the kernel, which
// needs the client-facing interfaces (Settings.Interfaces).
func Answers(action string) bool { return action == ActionNXDomain || action == ActionRefused }

// ParseUpstream parses ADDR, ADDR:PORT or [ADDR6]:PORT; the port defaults
// to 53.
func ParseUpstream(s string) (netip.AddrPort, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		if a.Zone() != "" {
			return netip.AddrPort{}, inputErrorf("upstream %q: zoned addresses are not supported", s)
		}
		return netip.AddrPortFrom(a.Unmap(), DNSPort), nil
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, inputErrorf("upstream %q: want ADDR, ADDR:PORT or [ADDR6]:PORT", s)
	}
	if ap.Port() == 0 {
		return netip.AddrPort{}, inputErrorf("upstream %q: port 0", s)
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

// ParseRate parses "N/second" (or minute, hour, day).
func ParseRate(s string) (Rate, error) {
	num, unit, ok := strings.Cut(s, "/")
	n, err := strconv.ParseUint(num, 10, 32)
	if !ok || err != nil || n == 0 {
		return Rate{}, inputErrorf("rate %q: want N/second, N/minute, N/hour or N/day with N > 0", s)
	}
	units := map[string]RateUnit{"second": PerSecond, "minute": PerMinute, "hour": PerHour, "day": PerDay}
	u, ok := units[unit]
	if !ok {
		return Rate{}, inputErrorf("rate %q: unit must be second, minute, hour or day", s)
	}
	return Rate{N: n, Unit: u}, nil
}

func (r Rate) String() string {
	return fmt.Sprintf("%d/%s", r.N, [...]string{"second", "minute", "hour", "day"}[r.Unit])
}

// withDefaults returns the settings with zero values replaced by defaults.
func (s Settings) withDefaults() Settings {
	if s.Table == "" {
		s.Table = DefaultTable
	}
	if s.Action == "" {
		s.Action = DefaultAction
	}
	if s.LogRate.N == 0 {
		s.LogRate = DefaultLogRate
	}
	if s.LogBurst == 0 {
		s.LogBurst = DefaultLogBurst
	}
	return s
}

// Validate checks the settings (after defaults) and returns an input error
// naming the first problem.
func (s Settings) Validate() error {
	s = s.withDefaults()
	if !validTableName(s.Table) {
		return inputErrorf("table %q: use 1-64 letters, digits, '-' or '_'", s.Table)
	}
	if err := validAction(s.Action); err != nil {
		return err
	}
	if err := s.validInterfaces(); err != nil {
		return err
	}
	if len(s.Listen) == 0 {
		return inputErrorf("no listen address (--listen)")
	}
	if len(s.Upstreams) == 0 {
		return inputErrorf("no upstream (--upstream)")
	}
	if len(s.Clients) == 0 {
		return inputErrorf("no client network (--client)")
	}
	var up [7]int
	for _, u := range s.Upstreams {
		if !u.Addr().IsValid() || u.Port() == 0 {
			return inputErrorf("upstream %v: invalid", u)
		}
		up[family(u.Addr())]++
	}
	for _, l := range s.Listen {
		if !l.IsValid() || l.Zone() != "" || l.IsUnspecified() {
			return inputErrorf("listen address %v: want a unicast address of this box", l)
		}
		if up[family(l)] == 0 {
			return inputErrorf("listen address %v is IPv%d but there is no IPv%d upstream to send its queries to", l, family(l), family(l))
		}
		for _, u := range s.Upstreams {
			if u.Addr() == l.Unmap() {
				return inputErrorf("upstream %v is also a listen address", u)
			}
		}
	}
	for _, c := range s.Clients {
		if !c.IsValid() {
			return inputErrorf("client network %v: invalid", c)
		}
		if c.Masked() != c {
			return inputErrorf("client network %v has host bits set (did you mean %v?)", c, c.Masked())
		}
	}
	return nil
}

func family(a netip.Addr) Family {
	if a.Unmap().Is4() {
		return IPv4
	}
	return IPv6
}

func validTableName(t string) bool {
	if t == "" || len(t) > 64 {
		return false
	}
	for _, c := range t {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

func validAction(a string) error {
	for _, ok := range Actions {
		if a == ok {
			return nil
		}
	}
	return inputErrorf("action %q: must be one of %s", a, strings.Join(Actions, ", "))
}

// validInterfaces checks interface names as the kernel takes them (1-15
// bytes, no '/', ':' or space). Whether they exist is the caller's check:
// it needs the namespace.
func (s Settings) validInterfaces() error {
	for _, i := range s.Interfaces {
		if i == "" || len(i) > 15 || strings.ContainsAny(i, "/: \t\n") || i == "." || i == ".." {
			return inputErrorf("interface %q: not a valid interface name", i)
		}
	}
	return nil
}

// ValidateLists checks the per-list options against the settings: every
// list action must be known, and an answering action (nxdomain, refused),
// per list or global, needs at least one --interface.
func (s Settings) ValidateLists(lists []*List) error {
	s = s.withDefaults()
	answers := Answers(s.Action)
	for _, l := range lists {
		if l.Action == "" {
			continue
		}
		if err := validAction(l.Action); err != nil {
			return inputErrorf("list %s: %w", l.Path, err)
		}
		answers = answers || Answers(l.Action)
	}
	if answers && len(s.Interfaces) == 0 {
		return inputErrorf("the nxdomain and refused actions answer in the kernel and need the client-facing interfaces: give --interface IF (repeatable)")
	}
	return nil
}

// Counter kinds and the single counters of the table. Per-family and
// per-protocol counters are named kind_family_proto, e.g. checked_ipv4_udp.
const (
	CounterChecked        = "checked"
	CounterBlocked        = "blocked"
	CounterPassed         = "passed"
	CounterOutsider       = "outsider"        // queries to a listen address from outside the client networks
	CounterMalformed      = "malformed"       // queries failing the header gate
	CounterForwardDropped = "forward_dropped" // non-DNS (or non-NATed) traffic from clients
	CounterUnusual        = "unusual_layout"  // queries with answer/authority records or several additional records
)

// CounterName is the named counter for a kind, family ("ipv4", "ipv6") and
// protocol ("udp", "tcp").
func CounterName(kind, family, proto string) string {
	return kind + "_" + family + "_" + proto
}

// AllCounters lists every named counter in a compiled table, in order.
func AllCounters() []string {
	var out []string
	for _, k := range []string{CounterChecked, CounterBlocked, CounterPassed} {
		for _, f := range []string{"ipv4", "ipv6"} {
			for _, p := range []string{"udp", "tcp"} {
				out = append(out, CounterName(k, f, p))
			}
		}
	}
	out = append(out, CounterOutsider, CounterMalformed, CounterForwardDropped, CounterUnusual)
	for _, a := range Actions {
		out = append(out, ActionCounter(a))
	}
	return out
}

// ActionCounter is the named counter of queries a block action handled,
// e.g. action_nxdomain (action_log counts matches in monitor mode).
func ActionCounter(action string) string { return "action_" + action }

// ListCounter is the named counter of queries matched by the list at index
// i (in command-line/config order; a name in several lists counts for the
// first).
func ListCounter(i int) string { return fmt.Sprintf("list_%d", i) }
