package rules

import (
	"net/netip"
)

// Settings are the compile inputs other than the lists.
type Settings struct {
	Table     string           // default "nftdns"
	Listen    []netip.Addr     // the box's own addresses clients send DNS to
	Upstreams []netip.AddrPort // resolvers; port 53 when not given
	Clients   []netip.Prefix   // client networks allowed to query
	Action    string           // "drop" (the only action so far; see Actions)
	LogRate   Rate             // default 1/second
	LogBurst  uint32           // default 100
	// Strict drops queries of an unusual layout instead of only counting
	// them: answer or authority records, more than one additional record,
	// an additional record that is not an OPT right after the question,
	// or, without one, bytes after the question (see layoutRules).
	Strict    bool
	Intercept bool // also DNAT client queries to any other address (intercept.go)
	BlockDoT  bool // drop DNS over TLS (port 853) from the client networks
	// Interfaces are the client-facing interfaces: an in-kernel answer
	// (nxdomain, refused) is only sent back out of one of them, and a
	// blocked query that came in elsewhere is dropped. Required when an
	// answering action is used.
	Interfaces []string
	// NflogGroup, when not 0, sends the log of blocked (or, in monitor
	// mode, matched) queries to this nflog group instead of the kernel log
	// (nftdns watch reads it); the rate limit stays.
	NflogGroup uint16
}

// Rate is a packet rate such as 1/second.
type Rate struct {
	N    uint64
	Unit RateUnit
}

// Source is where an entry came from.
type Source struct {
	File string
	Line int
}

// ListSpec says where one list is and how to read and use it: the
// per-list options of the config file.
type ListSpec struct {
	Path       string // a file or a glob
	Format     string // "" = detect; else one of Formats
	Subdomains bool   // every plain entry also covers the names under it
	Allow      bool   // an allowlist: every entry is an exception
	Action     string // action for the names this list blocks; "" = Settings.Action
}

// Match says which names an entry covers.
type Match uint8

const (
	MatchExact Match = iota // the name itself
	MatchBelow              // every name under it, not the name (*.d)
	MatchTree               // the name and every name under it (||d^)
)

func (m Match) String() string {
	switch m {
	case MatchExact:
		return "exact"
	case MatchBelow:
		return "below"
	case MatchTree:
		return "tree"
	}
	return "match(?)"
}

// Covers reports whether an entry for entry with match m covers name; both
// are normalised names. Suffixes match at label boundaries only:
// notexample.com is not under example.com.
func (m Match) Covers(entry, name string) bool {
	switch m {
	case MatchExact:
		return name == entry
	case MatchTree:
		if name == entry {
			return true
		}
		fallthrough
	case MatchBelow:
		return len(name) > len(entry) && name[len(name)-len(entry)-1] == '.' && name[len(name)-len(entry):] == entry
	}
	return false
}

// Entry is one list entry other than a plain exact block name.
type Entry struct {
	Name  string // normalised, ASCII (punycode), no trailing dot
	Match Match
	Allow bool   // an exception: the names it covers are never blocked
	Line  int    // first line it was seen on
	Text  string // the entry as written, cut to 80 bytes, for explanations
}

// Key spells the entry the way a list would, one spelling per (Name,
// Match, Allow): "d", "*.d", "||d^", with "@@" in front of an exception.
func (e Entry) Key() string {
	k := e.Name
	switch e.Match {
	case MatchBelow:
		k = "*." + k
	case MatchTree:
		k = "||" + k + "^"
	}
	if e.Allow {
		k = "@@" + k
	}
	return k
}

// Count is the number of distinct entries: exact block names and every
// other entry.
func (l *List) Count() int { return len(l.Names) + len(l.Entries) }

// List is one parsed list: names in lowercase presentation form without
// the trailing dot, deduplicated, each with its first source line.
type List struct {
	Path  string
	Names map[string]int // exact block name -> first line number
	// Entries are every entry that is not a plain exact block name:
	// suffix blocks and all allow entries (exact or suffix), deduplicated
	// by (Name, Match, Allow) keeping the first line, in file order.
	Entries     []Entry
	Format      string // the format it was read as: "rpz", or "" (per-line detection) or the forced one
	Action      string // from ListSpec.Action; "" = Settings.Action
	Allow       bool   // from ListSpec.Allow
	Lines       int    // lines read
	Skipped     int    // invalid lines skipped with SkipInvalid
	Dups        int    // duplicate entries merged
	Ignored     int    // comment and header lines ("! ...", "[Adblock Plus 2.0]")
	Unsupported int    // entries skipped because nftdns cannot express them (see Formats)

	seen map[entryKey]struct{} // dedup of Entries while parsing
}

type entryKey struct {
	name  string
	match Match
	allow bool
}

// ParseOptions tunes list parsing.
type ParseOptions struct {
	SkipInvalid bool
	Format      string // "" = detect per line (and RPZ by content or name); else one of Formats
	Subdomains  bool   // plain entries also cover their subdomains
	Allow       bool   // every entry is an exception (an allowlist)
}
