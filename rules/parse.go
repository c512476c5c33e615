package rules

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
)

// maxLineLen bounds one list line; longer lines are an input error rather
// than a reason to buffer without limit.
const maxLineLen = 64 * 1024

// ParseError is a bad line in a list. Its text is `FILE:LINE: reason: "token"`.
type ParseError struct {
	File   string
	Line   int
	Reason string
	Token  string
}

// maxTokenQuote bounds how much of a bad token an error quotes, so that a
// line of binary junk still gives a one-line error.
const maxTokenQuote = 80

func (e *ParseError) Error() string {
	if e.Token == "" {
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Reason)
	}
	tok := e.Token
	if len(tok) > maxTokenQuote {
		return fmt.Sprintf("%s:%d: %s: %q... (%d bytes)", e.File, e.Line, e.Reason, tok[:maxTokenQuote], len(tok))
	}
	return fmt.Sprintf("%s:%d: %s: %q", e.File, e.Line, e.Reason, tok)
}

// InputError is bad input other than a list line: a setting, a missing list.
type InputError struct{ Err error }

func (e *InputError) Error() string { return e.Err.Error() }
func (e *InputError) Unwrap() error { return e.Err }

func inputErrorf(format string, a ...any) error {
	return &InputError{Err: fmt.Errorf(format, a...)}
}

// IsInputError reports whether err was caused by bad input (a list line, a
// setting, an unreadable list) rather than by the system: the CLI exits 2.
func IsInputError(err error) bool {
	var pe *ParseError
	var ie *InputError
	return errors.As(err, &pe) || errors.As(err, &ie)
}

// hostsNamesIgnored are the names a hosts file defines for the machine
// itself; blocklists in hosts format start with them and nobody means to
// block them.
var hostsNamesIgnored = map[string]bool{
	"localhost": true, "localhost.localdomain": true, "local": true,
	"broadcasthost": true, "ip6-localhost": true, "ip6-loopback": true,
	"ip6-localnet": true, "ip6-mcastprefix": true, "ip6-allnodes": true,
	"ip6-allrouters": true, "ip6-allhosts": true,
}

// Formats are the values of ParseOptions.Format (and the config's
// per-list "format"). "" detects the syntax of each line, and a whole file
// as RPZ by its name (.zone, .rpz) or content ($ORIGIN, $TTL, SOA, CNAME to
// "." or "rpz-"):
//
//   - plain: one name per line (exact), "*.name" (names under it), hosts
//     lines (an address, then names); "#" comments. "hosts" is the same.
//   - adblock: "||name^" (the name and everything under it), "@@||name^"
//     (exception); "!" comments and "[Adblock ...]" headers are ignored;
//     every other rule (modifiers "$...", URL paths, cosmetic "##" rules,
//     bare patterns) is skipped and counted in List.Unsupported.
//   - dnsmasq: "address=/name/.../...", "local=/name/", "server=/name/..."
//     (each name and everything under it; "*.name" names under it); other
//     directives are counted in List.Unsupported.
//   - rpz: a zone file, read with github.com/miekg/dns (see parseRPZ).
//
// Forcing a format turns the other syntaxes into errors (or, for adblock
// and dnsmasq, into unsupported lines), where detection would accept them.
var Formats = []string{"plain", "hosts", "adblock", "dnsmasq", "rpz"}

// canonicalFormat checks a format name; "hosts" is plain.
func canonicalFormat(f string) (string, error) {
	switch f {
	case "", "plain", "adblock", "dnsmasq", "rpz":
		return f, nil
	case "hosts":
		return "plain", nil
	}
	return "", inputErrorf("unknown list format %q (want one of %s)", f, strings.Join(Formats, ", "))
}

// ParseList reads a list from r; path names it in errors and, with no
// Format, helps detect RPZ. Gzip data (told by its first bytes) is
// decompressed on the fly. Blank lines, whole-line and trailing '#'
// comments, CRLF line ends, a UTF-8 byte order mark, trailing dots and upper
// case are accepted everywhere; names in Unicode are converted to punycode
// (see entryName). See Formats for the syntaxes. Invalid lines are errors
// (*ParseError), or with SkipInvalid are counted in Skipped. It streams:
// memory grows with the distinct entries, not the lines.
func ParseList(r io.Reader, path string, opt ParseOptions) (*List, error) {
	format, err := canonicalFormat(opt.Format)
	if err != nil {
		return nil, err
	}
	br := bufio.NewReaderSize(r, 64*1024)
	text, err := maybeGunzip(br, path)
	if err != nil {
		return nil, err
	}
	if text != io.Reader(br) {
		br = bufio.NewReaderSize(text, 64*1024)
	}
	if format == "" && detectRPZ(path, br) {
		format = "rpz"
	}
	l := &List{Path: path, Names: make(map[string]int), Allow: opt.Allow, Format: format}
	if format == "rpz" {
		if err := l.parseRPZ(br, opt); err != nil {
			return nil, err
		}
		l.seen = nil
		return l, nil
	}
	sc := bufio.NewScanner(br)
	sc.Buffer(make([]byte, 0, 64*1024), maxLineLen)
	for sc.Scan() {
		l.Lines++
		line := sc.Bytes()
		if l.Lines == 1 {
			line = bytes.TrimPrefix(line, []byte("\xef\xbb\xbf"))
		}
		if err := l.parseLine(string(line), format, opt); err != nil {
			if !opt.SkipInvalid {
				return nil, err
			}
			l.Skipped++
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, &ParseError{File: path, Line: l.Lines + 1, Reason: fmt.Sprintf("line longer than %d bytes", maxLineLen)}
		}
		if isInput(err) {
			return nil, err
		}
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	l.seen = nil
	return l, nil
}

// maxEntryText bounds Entry.Text.
const maxEntryText = 80

func cutText(s string) string {
	if len(s) > maxEntryText {
		return s[:maxEntryText]
	}
	return s
}

// add records one entry: an exact block name goes to Names (the exact
// compiler's input), everything else to Entries. An allowlist turns every
// entry into an exception.
func (l *List) add(name string, m Match, allow bool, text string) {
	allow = allow || l.Allow
	if m == MatchExact && !allow {
		if _, dup := l.Names[name]; dup {
			l.Dups++
			return
		}
		l.Names[name] = l.Lines
		return
	}
	k := entryKey{name, m, allow}
	if l.seen == nil {
		l.seen = make(map[entryKey]struct{})
	}
	if _, dup := l.seen[k]; dup {
		l.Dups++
		return
	}
	l.seen[k] = struct{}{}
	l.Entries = append(l.Entries, Entry{Name: name, Match: m, Allow: allow, Line: l.Lines, Text: cutText(text)})
}

func (l *List) errorf(token, format string, a ...any) error {
	return &ParseError{File: l.Path, Line: l.Lines, Reason: fmt.Sprintf(format, a...), Token: token}
}

// isCosmetic reports whether a line is an adblock element-hiding or
// scriptlet rule ("example.com##.ad", "#@#", "#?#", "#$#", "#%#"): its
// '#' is not a comment, and the name before it must not be read as an
// entry.
func isCosmetic(line string) bool {
	i := strings.IndexByte(line, '#')
	if i <= 0 || i+1 >= len(line) || line[i-1] == ' ' || line[i-1] == '\t' {
		return false
	}
	return strings.IndexByte("#@?$%", line[i+1]) >= 0
}

// adblockChars appear in adblock URL patterns and never in a name.
const adblockChars = "/$^|*&?=,:"

func (l *List) parseLine(raw, format string, opt ParseOptions) error {
	line := strings.TrimSpace(raw)
	switch {
	case line == "":
		return nil
	case line[0] == '#', line[0] == '!' && format != "plain" && format != "dnsmasq",
		line[0] == '[' && line[len(line)-1] == ']' && (format == "" || format == "adblock"):
		l.Ignored++
		return nil
	}
	switch format {
	case "adblock":
		return l.parseAdblock(line)
	case "dnsmasq":
		return l.parseDnsmasq(line, true)
	case "plain":
		return l.parsePlain(line, opt)
	}
	// Detection, most distinctive syntax first.
	switch {
	case strings.HasPrefix(line, "@@"), strings.HasPrefix(line, "||"), strings.HasPrefix(line, "|"), isCosmetic(line):
		return l.parseAdblock(line)
	case strings.HasPrefix(line, "address="), strings.HasPrefix(line, "local="), strings.HasPrefix(line, "server="):
		return l.parseDnsmasq(line, false)
	}
	body := line
	if i := strings.IndexByte(body, '#'); i >= 0 {
		body = strings.TrimSpace(body[:i])
	}
	if strings.ContainsAny(body, adblockChars) && !strings.HasPrefix(body, "*.") && !isHostsLine(body) {
		// An adblock URL pattern ("/ads/banner", "ads.example.com$third-party"):
		// never a name.
		l.Unsupported++
		return nil
	}
	return l.parsePlain(line, opt)
}

// isHostsLine reports whether a line starts with an address (IPv6
// addresses hold ':').
func isHostsLine(line string) bool {
	f, _, _ := strings.Cut(line, " ")
	f, _, _ = strings.Cut(f, "\t")
	_, err := netip.ParseAddr(f)
	return err == nil
}

// parseAdblock reads "||name^" and "@@||name^" (optionally ending in "|");
// every other adblock rule is counted as unsupported.
func (l *List) parseAdblock(line string) error {
	allow := false
	body := line
	if strings.HasPrefix(body, "@@") {
		allow = true
		body = body[2:]
	}
	if !strings.HasPrefix(body, "||") {
		l.Unsupported++
		return nil
	}
	body = strings.TrimSuffix(body[2:], "|")
	name, ok := strings.CutSuffix(body, "^")
	if !ok || name == "" || strings.ContainsAny(name, adblockChars) || strings.ContainsAny(name, " \t#") {
		// No end anchor ("||ads" also matches "adsite.example"),
		// modifiers, paths, ports, wildcards: not a name.
		l.Unsupported++
		return nil
	}
	n, err := entryName(name)
	if err != nil {
		return l.errorf(line, "%v", err)
	}
	l.add(n, MatchTree, allow, line)
	return nil
}

// parseDnsmasq reads address=, local= and server= lines: every domain
// between the first and the last '/' covers itself and its subdomains.
// Other directives (or, when detecting, lines in no known syntax) are
// unsupported.
func (l *List) parseDnsmasq(line string, forced bool) error {
	key, val, ok := strings.Cut(line, "=")
	if !ok || (key != "address" && key != "local" && key != "server") {
		if forced && ok {
			l.Unsupported++
			return nil
		}
		return l.errorf(line, "not a dnsmasq address=, local= or server= line")
	}
	if !strings.HasPrefix(val, "/") || strings.Count(val, "/") < 2 {
		// "server=198.51.100.1": an upstream for every name, no domain.
		l.Unsupported++
		return nil
	}
	parts := strings.Split(val, "/")
	domains := parts[1 : len(parts)-1]
	for _, d := range domains {
		if d == "" || d == "#" {
			// "//" means unqualified names, "#" every name: not an entry.
			l.Unsupported++
			continue
		}
		m := MatchTree
		if rest, ok := strings.CutPrefix(d, "*."); ok {
			m, d = MatchBelow, rest
		} else {
			d = strings.TrimPrefix(d, ".")
		}
		n, err := entryName(d)
		if err != nil {
			return l.errorf(d, "%v", err)
		}
		l.add(n, m, false, line)
	}
	return nil
}

// parsePlain reads a name, "*.name", or a hosts line, with an optional
// trailing '#' comment.
func (l *List) parsePlain(line string, opt ParseOptions) error {
	if i := strings.IndexByte(line, '#'); i >= 0 {
		line = line[:i]
	}
	fields := strings.Fields(line)
	if len(fields) == 0 {
		return nil
	}
	names := fields
	hosts := false
	if _, err := netip.ParseAddr(fields[0]); err == nil {
		hosts = true
		names = fields[1:]
		if len(names) == 0 {
			return l.errorf(strings.TrimSpace(line), "hosts line without a name")
		}
	} else if len(fields) > 1 {
		return l.errorf(strings.TrimSpace(line), "more than one name on a line that is not a hosts line")
	}
	for _, tok := range names {
		if hosts {
			if _, err := netip.ParseAddr(tok); err == nil {
				continue // "0.0.0.0 0.0.0.0"
			}
			if hostsNamesIgnored[strings.ToLower(strings.TrimSuffix(tok, "."))] {
				continue
			}
		}
		m := MatchExact
		name := tok
		if rest, ok := strings.CutPrefix(tok, "*."); ok {
			m, name = MatchBelow, rest
		} else if opt.Subdomains {
			m = MatchTree
		}
		n, err := entryName(name)
		if err != nil {
			return l.errorf(tok, "%v", err)
		}
		l.add(n, m, false, tok)
	}
	return nil
}

// LoadLists opens and parses each path; a path may be a glob (see
// ExpandPath) and a file gzip data. A missing or unreadable file is an
// input error naming the file.
func LoadLists(paths []string, opt ParseOptions) ([]*List, error) {
	lists := make([]*List, 0, len(paths))
	for _, pat := range paths {
		files, err := ExpandPath(pat)
		if err != nil {
			return nil, err
		}
		for _, p := range files {
			l, err := loadList(p, opt)
			if err != nil {
				return nil, err
			}
			lists = append(lists, l)
		}
	}
	return lists, nil
}

func loadList(path string, opt ParseOptions) (*List, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, &InputError{Err: fmt.Errorf("blocklist: %w", err)}
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.IsDir() {
		return nil, inputErrorf("blocklist %s: is a directory", path)
	}
	l, err := ParseList(f, path, opt)
	if err != nil {
		var pe *ParseError
		if errors.As(err, &pe) {
			return nil, err
		}
		return nil, &InputError{Err: err}
	}
	return l, nil
}
