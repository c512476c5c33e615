package rules

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/miekg/dns"
)

// rpzSniff is how much of a list detectRPZ looks at.
const rpzSniff = 16 * 1024

// detectRPZ reports whether a list is an RPZ zone file: by its name
// (.zone, .rpz, also before .gz) or by its first bytes: a $ORIGIN or $TTL
// directive, an SOA record, or a CNAME to one of RPZ's policy targets. None
// of these can be a line of the other formats.
func detectRPZ(path string, br *bufio.Reader) bool {
	base := strings.TrimSuffix(strings.ToLower(filepath.Base(path)), ".gz")
	if strings.HasSuffix(base, ".zone") || strings.HasSuffix(base, ".rpz") {
		return true
	}
	head, _ := br.Peek(rpzSniff)
	for len(head) > 0 {
		var line []byte
		line, head, _ = bytes.Cut(head, []byte("\n"))
		if i := bytes.IndexByte(line, ';'); i >= 0 {
			line = line[:i]
		}
		f := strings.Fields(strings.ToUpper(string(line)))
		if len(f) == 0 {
			continue
		}
		if f[0] == "$ORIGIN" || f[0] == "$TTL" {
			return true
		}
		for i, w := range f {
			if i == 0 {
				continue
			}
			if w == "SOA" {
				return true
			}
			if w == "CNAME" && i+1 < len(f) && (f[i+1] == "." || f[i+1] == "*." || strings.HasPrefix(f[i+1], "RPZ-")) {
				return true
			}
		}
	}
	return false
}

// zoneReader feeds the zone parser byte by byte (it then reads through
// io.ByteReader without buffering of its own), so that the line count is
// exact when a record comes out: miekg/dns does not say which line a record
// was on. It also sees the directives the parser consumes silently.
type zoneReader struct {
	br     *bufio.Reader
	lines  int  // newlines read
	last   byte // last byte read
	cur    []byte
	long   bool   // cur was cut
	origin string // first $ORIGIN, lowercased
	ttl    int    // $TTL lines
	other  int    // comment and $ORIGIN lines
}

func (z *zoneReader) ReadByte() (byte, error) {
	b, err := z.br.ReadByte()
	if err != nil {
		if len(z.cur) > 0 {
			z.endLine()
		}
		return b, err
	}
	z.last = b
	if b == '\n' {
		z.lines++
		z.endLine()
	} else if len(z.cur) < 512 {
		z.cur = append(z.cur, b)
	} else {
		z.long = true
	}
	return b, nil
}

func (z *zoneReader) Read(p []byte) (int, error) {
	for i := range p {
		b, err := z.ReadByte()
		if err != nil {
			return i, err
		}
		p[i] = b
	}
	return len(p), nil
}

func (z *zoneReader) endLine() {
	line := strings.TrimSpace(string(z.cur))
	z.cur, z.long = z.cur[:0], false
	f := strings.Fields(line)
	switch {
	case len(f) == 0:
	case strings.HasPrefix(f[0], ";"):
		z.other++
	case strings.EqualFold(f[0], "$TTL"):
		z.ttl++
	case strings.EqualFold(f[0], "$ORIGIN"):
		z.other++
		if z.origin == "" && len(f) > 1 {
			z.origin = strings.ToLower(dns.Fqdn(f[1]))
		}
	}
}

// line is the line the record just returned ended on.
func (z *zoneReader) line() int {
	if z.last == '\n' {
		return z.lines
	}
	return z.lines + 1
}

// parseRPZ reads an RPZ zone. Owner names relative to the zone apex (the
// SOA's owner, else the first $ORIGIN; names outside it are taken as they
// are, relative to the root) are triggers; "*.name" covers the names under
// name. Policies: CNAME . (NXDOMAIN), CNAME *. (NODATA) and CNAME
// rpz-drop. block; CNAME rpz-passthru. allows. SOA, NS, $TTL, triggers
// nftdns cannot express (rpz-ip, rpz-nsdname, rpz-client-ip, rpz-nsip, any
// rpz- label) and other policies (local data, rpz-tcp-only.) are skipped
// and counted in Unsupported; comments and $ORIGIN in Ignored.
//
// A name the trigger rules reject is a bad line like any other (skipped
// with SkipInvalid); a zone syntax error stops the parse even with
// SkipInvalid, since the zone parser cannot resume after one.
func (l *List) parseRPZ(br *bufio.Reader, opt ParseOptions) error {
	z := &zoneReader{br: br}
	// Skip a UTF-8 byte order mark.
	if b, err := br.Peek(3); err == nil && string(b) == "\xef\xbb\xbf" {
		_, _ = br.Discard(3)
	}
	zp := dns.NewZoneParser(z, ".", l.Path)
	zp.SetDefaultTTL(3600)
	apex := ""
	for rr, ok := zp.Next(); ok; rr, ok = zp.Next() {
		l.Lines = z.line()
		h := rr.Header()
		owner := strings.ToLower(h.Name)
		switch h.Rrtype {
		case dns.TypeSOA:
			if apex == "" {
				apex = owner
			}
			l.Unsupported++
			continue
		case dns.TypeNS:
			l.Unsupported++
			continue
		}
		origin := apex
		if origin == "" {
			origin = z.origin
		}
		if err := l.rpzRecord(rr, owner, origin); err != nil {
			if !opt.SkipInvalid {
				return err
			}
			l.Skipped++
		}
	}
	if err := zp.Err(); err != nil {
		var pe *dns.ParseError
		if isInput(err) {
			return err
		}
		if !errors.As(err, &pe) {
			return fmt.Errorf("read %s: %w", l.Path, err)
		}
		msg := strings.TrimPrefix(err.Error(), l.Path+": ")
		return &ParseError{File: l.Path, Line: z.line(), Reason: "invalid zone record: " + msg}
	}
	l.Lines = z.lines
	if z.last != '\n' && z.last != 0 {
		l.Lines++
	}
	l.Unsupported += z.ttl
	l.Ignored += z.other
	return nil
}

func (l *List) rpzRecord(rr dns.RR, owner, origin string) error {
	trigger := owner
	if origin != "" && origin != "." {
		if owner == origin {
			l.Unsupported++ // apex data other than SOA and NS
			return nil
		}
		trigger = strings.TrimSuffix(owner, "."+origin)
	}
	trigger = strings.TrimSuffix(trigger, ".")
	labels := strings.Split(trigger, ".")
	if strings.HasPrefix(labels[len(labels)-1], "rpz-") {
		l.Unsupported++ // rpz-ip, rpz-nsdname, rpz-client-ip, rpz-nsip, ...
		return nil
	}
	var allow bool
	cname, ok := rr.(*dns.CNAME)
	if !ok {
		l.Unsupported++ // local data (A, AAAA, TXT, ...)
		return nil
	}
	switch strings.ToLower(cname.Target) {
	case ".", "*.", "rpz-drop.":
	case "rpz-passthru.":
		allow = true
	default:
		l.Unsupported++ // a rewrite to a walled garden, rpz-tcp-only.
		return nil
	}
	if trigger == "*" || trigger == "" {
		l.Unsupported++ // every name
		return nil
	}
	m := MatchExact
	name := trigger
	if rest, ok := strings.CutPrefix(trigger, "*."); ok {
		m, name = MatchBelow, rest
	}
	text := cutText(trigger + " CNAME " + cname.Target)
	n, err := entryName(name)
	if err != nil {
		return l.errorf(text, "%v", err)
	}
	l.add(n, m, allow, text)
	return nil
}
