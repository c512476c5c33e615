//go:build linux

package harness

import (
	"context"
	"net/netip"
	"regexp"
	"strings"
)

// DigResult is dig's view of one query.
type DigResult struct {
	Status  string   // header status, e.g. "NOERROR"; empty if no reply
	Answers []string // answer-section lines, tab-separated as dig prints them
	NoReply bool     // dig gave up: timed out or the connection failed
	Cmd     CmdResult
}

var digStatus = regexp.MustCompile(`status: ([A-Z]+)`)

// Dig runs `ip netns exec NS dig @server name qtype` with one try of one
// second, over TCP if tcp is set. dig is the independent client: it sends
// EDNS with a cookie, which the Go client does not.
func Dig(ctx context.Context, ns string, server netip.Addr, name, qtype string, tcp bool) (DigResult, error) {
	args := []string{"netns", "exec", ns, "dig", "@" + server.String(), name, qtype,
		"+time=1", "+tries=1", "+noall", "+comments", "+answer"}
	if tcp {
		args = append(args, "+tcp")
	}
	res, err := Run(ctx, "", "ip", args...)
	if err != nil {
		return DigResult{Cmd: res}, err
	}
	r := DigResult{Cmd: res}
	if m := digStatus.FindStringSubmatch(res.Stdout); m != nil {
		r.Status = m[1]
	}
	// dig exits 9 when no reply came; 0 with a reply of any rcode.
	r.NoReply = res.Code == 9 || r.Status == ""
	for _, line := range strings.Split(res.Stdout, "\n") {
		line = strings.TrimSpace(line)
		if line != "" && !strings.HasPrefix(line, ";") {
			r.Answers = append(r.Answers, line)
		}
	}
	return r, nil
}

// AnswerUpstream returns the upstream identity found in dig's answer lines,
// 0 if none.
func (r DigResult) AnswerUpstream() int {
	for _, a := range r.Answers {
		f := strings.Fields(a)
		if len(f) < 5 {
			continue
		}
		rdata := strings.Trim(strings.Join(f[4:], " "), `"`)
		if strings.HasPrefix(rdata, idTXT) {
			var id int
			for _, c := range strings.TrimPrefix(rdata, idTXT) {
				if c < '0' || c > '9' {
					break
				}
				id = id*10 + int(c-'0')
			}
			return id
		}
		a, err := netip.ParseAddr(rdata)
		if err != nil {
			continue
		}
		if a.Is4() {
			b := a.As4()
			if [3]byte(b[:3]) == idV4Prefix {
				return int(b[3])
			}
		} else {
			b, p := a.As16(), idV6Prefix.As16()
			if [15]byte(b[:15]) == [15]byte(p[:15]) {
				return int(b[15])
			}
		}
	}
	return 0
}
