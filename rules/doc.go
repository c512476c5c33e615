// Package rules reads DNS blocklists and compiles them, with the box's
// settings, into an nftables ruleset held as data; it never talks to the
// kernel, so everything here is deterministic and testable without root.
package rules
