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

// List is one parsed list: names in lowercase presentation form without
// the trailing dot, deduplicated, each with its first source line.
type List struct {
	Path    string
	Names   map[string]int // exact block name -> first line number
	Action  string         // from ListSpec.Action; "" = Settings.Action
	Allow   bool           // from ListSpec.Allow
	Lines   int            // lines read
	Skipped int            // invalid lines skipped with SkipInvalid
	Dups    int            // duplicate names merged
}

// ParseOptions tunes list parsing.
type ParseOptions struct {
	SkipInvalid bool
	Format      string // "" = detect per line (and RPZ by content or name)
	Subdomains  bool   // plain entries also cover their subdomains
	Allow       bool   // every entry is an exception (an allowlist)
}
