//go:build linux

package integration

import (
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"nftdns/integration/harness"
)

// listServer serves a blocklist over HTTP from inside the upstream
// namespace, with an ETag, and can be told to fail.
type listServer struct {
	mu          sync.Mutex
	body        string
	fail        bool
	gets, cond  int // requests, and those that carried If-None-Match
	notModified int
}

func (s *listServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gets++
	if s.fail {
		http.Error(w, "down for the test", http.StatusInternalServerError)
		return
	}
	etag := `"` + harness.Hash8(s.body) + `"`
	if inm := r.Header.Get("If-None-Match"); inm != "" {
		s.cond++
		if inm == etag {
			s.notModified++
			w.WriteHeader(http.StatusNotModified)
			return
		}
	}
	w.Header().Set("ETag", etag)
	_, _ = w.Write([]byte(s.body))
}

func (s *listServer) set(f func(s *listServer)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(s)
}

// TestURLSource: a blocklist given by URL is fetched (from a server in a
// test namespace), revalidated with its ETag on the next apply, and when
// the server fails the last good copy is used, said on stderr and counted
// by the daemon's metrics.
func TestURLSource(t *testing.T) {
	ctx := testCtx(t, 2*time.Minute)
	topo := newTopo(t, ctx)
	srv := &listServer{body: blockedName + "\n"}
	addr := netip.AddrPortFrom(topo.Upstreams[0].V4, 8080)
	var ln net.Listener
	if err := harness.Do(topo.Upstream, func() error {
		var err error
		ln, err = net.Listen("tcp", addr.String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: srv, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = hs.Serve(ln) }()
	t.Cleanup(func() { _ = hs.Close() })
	url := "http://" + addr.String() + "/list.txt"
	stateDir := t.TempDir()

	// apply runs inside the box, where the fetch must come from.
	applyInBox := func() harness.CmdResult {
		t.Helper()
		args := append([]string{"netns", "exec", topo.Box, nftdnsBin, "apply", "--state-dir", stateDir}, topo.ApplyArgs(url)...)
		res, err := harness.Run(ctx, "", "ip", args...)
		if err != nil || res.Code != 0 {
			t.Fatalf("apply: %v\n%s", err, res)
		}
		return res
	}
	applyInBox()
	expectBlocked(t, topo, query(ctx, topo, harness.Query{Name: blockedName, Proto: harness.UDP, Server: listen(harness.V4), Timeout: blockTimeout}))

	res := applyInBox()
	srv.set(func(s *listServer) {
		if s.cond != 1 || s.notModified != 1 {
			t.Errorf("second apply: %d conditional requests, %d not modified; want 1, 1", s.cond, s.notModified)
		}
	})
	if !strings.Contains(res.Stdout, "(unchanged)") {
		t.Errorf("second apply:\n%s", res)
	}

	srv.set(func(s *listServer) { s.fail = true })
	res = applyInBox()
	if !strings.Contains(res.Stderr, "fetching "+url+" failed, using the last good copy") {
		t.Errorf("failed fetch not reported:\n%s", res)
	}
	expectBlocked(t, topo, query(ctx, topo, harness.Query{Name: blockedName, Proto: harness.UDP, Server: listen(harness.V4), Timeout: blockTimeout}))

	// The daemon counts the failure.
	d := startDaemon(t, topo, stateDir, writeConfig(t, topo, url))
	waitMetric(t, ctx, topo, "nftdns_list_fetch_failures_total", map[string]string{"source": url}, func(v float64) bool { return v >= 1 })
	waitMetric(t, ctx, topo, "nftdns_list_names", map[string]string{"source": url}, func(v float64) bool { return v == 1 })
	d.stop(t)
}
