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

// ParseList reads a blocklist from r; path names it in errors. Accepted
// lines: one name; a hosts-file line (address, then one or more names);
// '#' comments, whole-line or trailing; blank lines. CRLF line ends, a UTF-8
// byte order mark, trailing dots and upper case are accepted. It streams:
// memory grows with the distinct names, not the lines.
func ParseList(r io.Reader, path string, opt ParseOptions) (*List, error) {
	l := &List{Path: path, Names: make(map[string]int)}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), maxLineLen)
	for sc.Scan() {
		l.Lines++
		line := sc.Bytes()
		if l.Lines == 1 {
			line = bytes.TrimPrefix(line, []byte("\xef\xbb\xbf"))
		}
		if err := l.parseLine(line); err != nil {
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
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return l, nil
}

func (l *List) parseLine(raw []byte) error {
	if i := bytes.IndexByte(raw, '#'); i >= 0 {
		raw = raw[:i]
	}
	fields := strings.Fields(string(raw))
	if len(fields) == 0 {
		return nil
	}
	names := fields
	hosts := false
	if _, err := netip.ParseAddr(fields[0]); err == nil {
		hosts = true
		names = fields[1:]
		if len(names) == 0 {
			return &ParseError{File: l.Path, Line: l.Lines, Reason: "hosts line without a name", Token: strings.TrimSpace(string(raw))}
		}
	} else if len(fields) > 1 {
		return &ParseError{File: l.Path, Line: l.Lines, Reason: "more than one name on a line that is not a hosts line", Token: strings.TrimSpace(string(raw))}
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
		name, err := NormalizeName(tok)
		if err != nil {
			return &ParseError{File: l.Path, Line: l.Lines, Reason: err.Error(), Token: tok}
		}
		if _, dup := l.Names[name]; dup {
			l.Dups++
			continue
		}
		l.Names[name] = l.Lines
	}
	return nil
}

// LoadLists opens and parses each path. A missing or unreadable file is an
// input error naming the file.
func LoadLists(paths []string, opt ParseOptions) ([]*List, error) {
	lists := make([]*List, 0, len(paths))
	for _, p := range paths {
		l, err := loadList(p, opt)
		if err != nil {
			return nil, err
		}
		lists = append(lists, l)
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
