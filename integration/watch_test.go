//go:build linux

package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"nftdns/integration/harness"
)

// watchLine is the part of a 'watch --json' line the tests check.
type watchLine struct {
	Time       string `json:"time"`
	Client     string `json:"client"`
	ClientPort uint16 `json:"client_port"`
	Server     string `json:"server"`
	Name       string `json:"name"`
	Type       string `json:"type"`
	Proto      string `json:"proto"`
	Action     string `json:"action"`
	List       *int   `json:"list"`
	ListPath   string `json:"list_path"`
	Error      string `json:"error"`
}

// watcher is a running 'nftdns watch --json' against the box.
type watcher struct {
	cmd    *exec.Cmd
	lines  chan watchLine
	stderr *strings.Builder
	done   chan error
}

// startWatch starts 'nftdns watch --json' with the box's netns and the
// test's state directory and returns once it has subscribed (it says so on
// stderr after the kernel acknowledged the bind).
func startWatch(t *testing.T, ctx context.Context, cli *harness.CLI, args ...string) *watcher {
	t.Helper()
	full := append([]string{"watch", "--netns", cli.NetNS, "--state-dir", cli.StateDir, "--json"}, args...)
	cmd := exec.CommandContext(ctx, cli.Bin, full...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderrPipe, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start nftdns watch: %v", err)
	}
	w := &watcher{cmd: cmd, lines: make(chan watchLine, 64), stderr: &strings.Builder{}, done: make(chan error, 1)}
	ready := make(chan bool, 1)
	stderrDone := make(chan struct{})
	go func() {
		defer close(stderrDone)
		sc := bufio.NewScanner(stderrPipe)
		signalled := false
		for sc.Scan() {
			w.stderr.WriteString(sc.Text() + "\n")
			if !signalled && strings.Contains(sc.Text(), "watching nflog group") {
				signalled = true
				ready <- true
			}
		}
		if !signalled {
			ready <- false
		}
	}()
	stdoutDone := make(chan struct{})
	go func() {
		defer close(stdoutDone)
		defer close(w.lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var l watchLine
			if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
				l.Error = fmt.Sprintf("not JSON: %q", sc.Text())
			}
			w.lines <- l
		}
	}()
	go func() {
		<-stdoutDone
		<-stderrDone
		w.done <- cmd.Wait()
	}()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	select {
	case ok := <-ready:
		if !ok {
			<-w.done
			t.Fatalf("nftdns watch did not start: %s", w.stderr)
		}
	case <-ctx.Done():
		t.Fatalf("nftdns watch did not subscribe: %v", ctx.Err())
	}
	return w
}

// next returns the next line watch printed, failing when ctx ends first.
func (w *watcher) next(t *testing.T, ctx context.Context) watchLine {
	t.Helper()
	select {
	case l, ok := <-w.lines:
		if !ok {
			t.Fatalf("nftdns watch ended early: %s", w.stderr)
		}
		return l
	case <-ctx.Done():
		t.Fatalf("no line from nftdns watch: %v", ctx.Err())
	}
	return watchLine{}
}

// stop sends SIGINT and checks that watch exits 0.
func (w *watcher) stop(t *testing.T) {
	t.Helper()
	if err := w.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatalf("SIGINT: %v", err)
	}
	if err := <-w.done; err != nil {
		t.Errorf("nftdns watch after SIGINT: %v; stderr: %s", err, w.stderr)
	}
	for l := range w.lines {
		t.Errorf("unexpected line after the last query: %+v", l)
	}
}

// TestWatch: with --nflog-group, 'nftdns watch --json' prints a blocked
// query (nxdomain) or a matched one (log, monitor mode: the query is still
// answered by an upstream, so this is also the kernel check that nflog
// delivery works for the log action) with the client's address and source
// port, the name, type, protocol, action and list; an allowed query prints
// nothing; SIGINT ends it with exit 0.
func TestWatch(t *testing.T) {
	for _, action := range []string{"nxdomain", "log"} {
		t.Run(action, func(t *testing.T) {
			ctx := testCtx(t, time.Minute)
			topo := newTopo(t, ctx)
			cli := cliFor(t, topo)
			list := standardList(t)
			group := fmt.Sprint(100 + rand.IntN(1000))
			if action == "log" {
				// A ruleset that logs to the kernel log cannot be
				// watched: exit 2, saying how to fix it.
				mustRun(t, ctx, cli, "apply", append(topo.ApplyArgs(list), "--action", action)...)
				res, err := harness.Run(ctx, "", cli.Bin, "watch", "--netns", cli.NetNS, "--state-dir", cli.StateDir)
				if err != nil || res.Code != 2 || !strings.Contains(res.Stderr, "--nflog-group") {
					t.Errorf("watch of a kernel-log ruleset: %v %s", err, res)
				}
			}
			mustRun(t, ctx, cli, "apply", append(topo.ApplyArgs(list), "--action", action, "--interface", harness.BoxClientIf, "--nflog-group", group)...)
			w := startWatch(t, ctx, cli) // the group comes from the generation
			if action == "nxdomain" {
				// A second listener on the same group is refused, clearly.
				res, err := harness.Run(ctx, "", cli.Bin, "watch", "--netns", cli.NetNS, "--state-dir", cli.StateDir)
				if err != nil || res.Code != 1 || !strings.Contains(res.Stderr, "already has a listener") {
					t.Errorf("second watch on the group: %v %s\nstderr: %s", err, res, res.Stderr)
				}
			}

			for _, c := range combos() {
				t.Run(c.String(), func(t *testing.T) {
					q := harness.Query{Name: blockedName, Type: dns.TypeAAAA, Proto: c.p, Server: listen(c.f), Timeout: 2 * time.Second}
					if c.p == harness.UDP {
						q.SourcePort = uint16(20000 + rand.IntN(20000))
					}
					o := query(ctx, topo, q)
					switch {
					case action == "log":
						expectAnswered(t, topo, o, c.f)
					case c.p == harness.UDP && (o.Msg == nil || o.Msg.Rcode != dns.RcodeNameError):
						t.Errorf("want NXDOMAIN, got %s", o)
					}
					l := w.next(t, ctx)
					t.Logf("watch: %+v", l)
					wantClient := harness.ClientAddr4.String()
					if c.f == harness.V6 {
						wantClient = harness.ClientAddr6.String()
					}
					if l.Error != "" || l.Client != wantClient || l.Server != listen(c.f).String() ||
						l.Name != blockedName+"." || l.Type != "AAAA" || l.Proto != string(c.p) ||
						l.Action != action || l.List == nil || *l.List != 0 || l.ListPath != list {
						t.Errorf("watch line %+v, want client %s, server %s, %s. AAAA %s, action %s, list 0 (%s)",
							l, wantClient, listen(c.f), blockedName, c.p, action, list)
					}
					if c.p == harness.UDP && l.ClientPort != q.SourcePort {
						t.Errorf("watch client port %d, want the query's source port %d", l.ClientPort, q.SourcePort)
					}
					if _, err := time.Parse(time.RFC3339Nano, l.Time); err != nil {
						t.Errorf("watch time %q: %v", l.Time, err)
					}

					// An allowed query prints nothing: the next line is
					// the marker query sent after it (nflog delivers in
					// order).
					expectAnswered(t, topo, query(ctx, topo, harness.Query{Name: allowedName, Proto: c.p, Server: listen(c.f)}), c.f)
					query(ctx, topo, harness.Query{Name: "hosts-style.example", Proto: c.p, Server: listen(c.f), Timeout: 2 * time.Second})
					if m := w.next(t, ctx); m.Name != "hosts-style.example." {
						t.Errorf("after an allowed query, watch printed %+v, want the marker hosts-style.example.", m)
					}
				})
			}
			w.stop(t)
		})
	}
}
