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
	Intercept bool             // also DNAT client queries to any other address (intercept.go)
	BlockDoT  bool             // drop DNS over TLS (port 853) from the client networks
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

// List is one parsed blocklist: names in lowercase presentation form
// without the trailing dot, deduplicated, each with its first source line.
type List struct {
	Path    string
	Names   map[string]int // name -> first line number
	Lines   int            // lines read
	Skipped int            // invalid lines skipped with SkipInvalid
	Dups    int            // duplicate names merged
}

// ParseOptions tunes list parsing.
type ParseOptions struct {
	SkipInvalid bool
}
