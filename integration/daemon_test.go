//go:build linux

package integration

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"nftdns/integration/harness"
)

// metricsAddr is where the daemon serves metrics: the box's own client
// side address (in the box namespace, never the root one).
var metricsAddr = netip.AddrPortFrom(harness.Listen4, 9153)

// syncBuf is a bytes.Buffer safe for a writing process and a reading test.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// daemonProc is a running `nftdns run` inside the box namespace.
type daemonProc struct {
	cmd  *exec.Cmd
	logs *syncBuf
	done chan error
}

// startDaemon runs `nftdns run --config cfg` inside the box namespace (so
// its health checks and metrics listener live there), with the test's
// state directory; it is killed at cleanup if still running.
func startDaemon(t *testing.T, topo *harness.Topology, stateDir, cfg string, args ...string) *daemonProc {
	t.Helper()
	if buildErr != nil {
		t.Fatalf("nftdns binary not available: %v", buildErr)
	}
	full := append([]string{"netns", "exec", topo.Box, nftdnsBin, "run", "--config", cfg, "--state-dir", stateDir}, args...)
	return startProc(t, exec.Command("ip", full...))
}

// startProc starts a daemon command and kills it at cleanup if still
// running.
func startProc(t *testing.T, cmd *exec.Cmd) *daemonProc {
	t.Helper()
	d := &daemonProc{cmd: cmd, logs: &syncBuf{}, done: make(chan error, 1)}
	d.cmd.Stdout, d.cmd.Stderr = d.logs, d.logs
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.done <- d.cmd.Wait() }()
	t.Cleanup(func() {
		if d.cmd.ProcessState == nil {
			_ = d.cmd.Process.Kill()
			<-d.done
		}
		if t.Failed() {
			t.Logf("daemon log:\n%s", d.logs)
		}
	})
	return d
}

// stop sends SIGTERM and waits (bounded) for a clean exit.
func (d *daemonProc) stop(t *testing.T) {
	t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-d.done:
		if err != nil {
			t.Fatalf("daemon exited with %v:\n%s", err, d.logs)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("daemon did not exit on SIGTERM:\n%s", d.logs)
	}
}

// scrape fetches and parses the daemon's metrics from inside the box.
func scrape(ctx context.Context, ns string) (map[string]*dto.MetricFamily, error) {
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := harness.Do(ns, func() error {
			var err error
			c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+metricsAddr.String()+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("HTTP %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(resp.Body)
}

// metricValue is the value of the series of family name with the labels
// (a subset), or false.
func metricValue(fams map[string]*dto.MetricFamily, name string, labels map[string]string) (float64, bool) {
	f := fams[name]
	if f == nil {
		return 0, false
	}
next:
	for _, m := range f.GetMetric() {
		for k, v := range labels {
			found := false
			for _, lp := range m.GetLabel() {
				if lp.GetName() == k && lp.GetValue() == v {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.GetCounter() != nil:
			return m.GetCounter().GetValue(), true
		case m.GetGauge() != nil:
			return m.GetGauge().GetValue(), true
		}
	}
	return 0, false
}

// waitFor polls cond every 50ms until it holds, failing the test after
// limit: a bound on waiting, not a speed assertion.
func waitFor(t *testing.T, ctx context.Context, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("gave up waiting %v for %s", limit, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitMetric waits until a scrape shows the series with a value v for
// which ok(v).
func waitMetric(t *testing.T, ctx context.Context, topo *harness.Topology, name string, labels map[string]string, ok func(float64) bool) {
	t.Helper()
	waitFor(t, ctx, 20*time.Second, fmt.Sprintf("%s%v", name, labels), func() bool {
		fams, err := scrape(ctx, topo.Box)
		if err != nil {
			return false
		}
		v, found := metricValue(fams, name, labels)
		return found && ok(v)
	})
}

func writeConfig(t *testing.T, topo *harness.Topology, lists ...string) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("listen: [" + harness.Listen4.String() + ", " + harness.Listen6.String() + "]\nupstream:\n")
	for _, u := range topo.Upstreams {
		fmt.Fprintf(&b, "  - %s\n  - '[%s]:53'\n", u.V4, u.V6)
	}
	fmt.Fprintf(&b, "client: [%s, %s]\nblocklist:\n", harness.ClientNet4, harness.ClientNet6)
	for _, l := range lists {
		fmt.Fprintf(&b, "  - %s\n", l)
	}
	b.WriteString("health-interval: 200ms\nhealth-fails: 3\nrefresh: 1h\nmetrics: " + metricsAddr.String() + "\n")
	p := filepath.Join(t.TempDir(), "nftdns.yaml")
	if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestDaemon runs `nftdns run` in the box: metrics scraped over HTTP parse
// and the blocked counter moves; SIGHUP picks up an edited list; an
// upstream stopped mid-run leaves the round robin and no query is lost
// after that, and it comes back when restarted; SIGTERM leaves the table,
// and --flush-on-exit removes it.
func TestDaemon(t *testing.T) {
	ctx := testCtx(t, 3*time.Minute)
	topo := newTopo(t, ctx)
	stateDir := t.TempDir()
	list := writeList(t, "daemon.list", blockedName, "other.example")
	cfg := writeConfig(t, topo, list)
	d := startDaemon(t, topo, stateDir, cfg)
	waitMetric(t, ctx, topo, "nftdns_applies_total", map[string]string{"result": "ok"}, func(v float64) bool { return v >= 1 })

	t.Run("metrics-blocked-counter", func(t *testing.T) {
		labels := map[string]string{"result": "blocked", "family": "ipv4", "proto": "udp"}
		fams, err := scrape(ctx, topo.Box)
		if err != nil {
			t.Fatal(err)
		}
		before, ok := metricValue(fams, "nftdns_queries_total", labels)
		if !ok {
			t.Fatalf("no nftdns_queries_total%v in the scrape", labels)
		}
		expectBlocked(t, topo, query(ctx, topo, harness.Query{Name: blockedName, Proto: harness.UDP, Server: listen(harness.V4), Timeout: blockTimeout}))
		fams, err = scrape(ctx, topo.Box)
		if err != nil {
			t.Fatal(err)
		}
		after, _ := metricValue(fams, "nftdns_queries_total", labels)
		if after < before+1 {
			t.Errorf("blocked counter %v -> %v, want it to move", before, after)
		}
		for _, name := range []string{"nftdns_upstream_up", "nftdns_upstream_share", "nftdns_list_names", "nftdns_apply_duration_seconds", "nftdns_last_success_timestamp_seconds", "process_resident_memory_bytes"} {
			if fams[name] == nil {
				t.Errorf("scrape has no %s", name)
			}
		}
	})

	t.Run("sighup-edited-list", func(t *testing.T) {
		// allowed.example has blocked.example's length: an element change.
		if err := os.WriteFile(list, []byte(allowedName+"\nother.example\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		waitMetric(t, ctx, topo, "nftdns_applies_total", map[string]string{"kind": "incremental", "result": "ok"}, func(v float64) bool { return v >= 1 })
		expectBlocked(t, topo, query(ctx, topo, harness.Query{Name: allowedName, Proto: harness.UDP, Server: listen(harness.V4), Timeout: blockTimeout}))
		expectAnswered(t, topo, query(ctx, topo, harness.Query{Name: blockedName, Proto: harness.UDP, Server: listen(harness.V4)}), harness.V4)
	})

	t.Run("upstream-down-and-back", func(t *testing.T) {
		down := topo.Upstreams[0]
		upLabel := map[string]string{"upstream": netip.AddrPortFrom(down.V4, 53).String()}
		topo.StopUpstream(down.ID)
		stopped := time.Now()
		waitMetric(t, ctx, topo, "nftdns_upstream_share", upLabel, func(v float64) bool { return v == 0 })
		// For the record (not asserted: timing): health-fails x
		// health-interval is 600 ms here.
		t.Logf("upstream-%d out of the round robin %v after it stopped (seen by scraping every 50 ms)", down.ID, time.Since(stopped).Round(time.Millisecond))
		waitMetric(t, ctx, topo, "nftdns_upstream_up", upLabel, func(v float64) bool { return v == 0 })
		// Out of the map: every query is answered, by the others.
		for _, c := range combos() {
			for i := range 6 {
				o := query(ctx, topo, harness.Query{Name: fmt.Sprintf("q%d-%s.example", i, c), Proto: c.p, Server: listen(c.f)})
				expectAnswered(t, topo, o, c.f)
				if o.Upstream == down.ID {
					t.Errorf("%s answered by the stopped upstream", o)
				}
			}
		}
		if err := topo.StartUpstream(down.ID); err != nil {
			t.Fatal(err)
		}
		waitMetric(t, ctx, topo, "nftdns_upstream_up", upLabel, func(v float64) bool { return v == 1 })
		// Up is the health state; the share moves once the round-robin map
		// holding it again is applied (queries sent in between, as one CI
		// run did, still go to the others).
		waitMetric(t, ctx, topo, "nftdns_upstream_share", upLabel, func(v float64) bool { return v > 0 })
		// Back in the map: it gets its share again.
		got := 0
		for i := range 12 {
			o := query(ctx, topo, harness.Query{Name: fmt.Sprintf("back%d.example", i), Proto: harness.UDP, Server: listen(harness.V4)})
			expectAnswered(t, topo, o, harness.V4)
			if o.Upstream == down.ID {
				got++
			}
		}
		if got == 0 {
			t.Errorf("the restarted upstream got none of 12 queries")
		}
	})

	d.stop(t)
	if res, err := harness.Nft(ctx, topo.Box, "list", "table", "inet", "nftdns"); err != nil || res.Code != 0 {
		t.Errorf("SIGTERM removed the table: %v %s", err, res)
	}
	if !strings.Contains(d.logs.String(), "msg=health") || !strings.Contains(d.logs.String(), "state=down") {
		t.Errorf("no structured health log lines:\n%s", d.logs)
	}

	// A second daemon, started outside the box and pointed at it with
	// --netns (its health checks must still come from the box), takes
	// over the first one's table and state, and removes the table when
	// told to on exit. No metrics: their address is the box's.
	d2 := startProc(t, exec.Command(nftdnsBin, "run", "--config", cfg, "--state-dir", stateDir,
		"--netns", topo.Box, "--metrics", "", "--flush-on-exit"))
	logHas := func(what string) func() bool { return func() bool { return strings.Contains(d2.logs.String(), what) } }
	waitFor(t, ctx, 30*time.Second, "the second daemon's apply", logHas("msg=apply"))
	second := topo.Upstreams[1]
	topo.StopUpstream(second.ID)
	waitFor(t, ctx, 30*time.Second, "upstream-2 down", logHas("upstream="+netip.AddrPortFrom(second.V4, 53).String()+" state=down"))
	if err := topo.StartUpstream(second.ID); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, 30*time.Second, "upstream-2 up", logHas("upstream="+netip.AddrPortFrom(second.V4, 53).String()+" state=up"))
	d2.stop(t)
	if res, _ := harness.Nft(ctx, topo.Box, "list", "table", "inet", "nftdns"); res.Code == 0 {
		t.Errorf("--flush-on-exit left the table")
	}
}
