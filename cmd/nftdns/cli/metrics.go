package cli

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"nftdns/rules"
)

// metrics are the daemon's Prometheus metrics, on a registry of their own.
type metrics struct {
	reg *prometheus.Registry

	upstreamUp     *prometheus.GaugeVec
	upstreamShare  *prometheus.GaugeVec
	healthChecks   *prometheus.CounterVec
	listNames      *prometheus.GaugeVec
	listFetchFails *prometheus.CounterVec
	names          prometheus.Gauge
	elements       prometheus.Gauge
	applies        *prometheus.CounterVec
	applySeconds   *prometheus.HistogramVec
	refreshes      *prometheus.CounterVec
	refreshSeconds prometheus.Histogram
	lastSuccess    *prometheus.GaugeVec
}

// kernelCollector reads the table's named counters at every scrape: the
// kernel keeps them, so nothing is lost between scrapes and nothing is
// counted twice.
type kernelCollector struct {
	e       *env
	netns   string
	table   string
	packets *prometheus.Desc
	bytes   *prometheus.Desc
	queries *prometheus.Desc
	actions *prometheus.Desc
	lists   *prometheus.Desc
	up      *prometheus.Desc
}

func (k *kernelCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- k.packets
	ch <- k.bytes
	ch <- k.queries
	ch <- k.actions
	ch <- k.lists
	ch <- k.up
}

func (k *kernelCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cs, err := func() (map[string]counterValue, error) {
		kn, err := k.e.open(k.netns)
		if err != nil {
			return nil, err
		}
		defer kn.Close()
		return kn.Counters(ctx, k.table)
	}()
	ok := 0.0
	if err == nil {
		ok = 1
	}
	ch <- prometheus.MustNewConstMetric(k.up, prometheus.GaugeValue, ok)
	for name, v := range cs {
		ch <- prometheus.MustNewConstMetric(k.packets, prometheus.CounterValue, float64(v.Packets), name)
		ch <- prometheus.MustNewConstMetric(k.bytes, prometheus.CounterValue, float64(v.Bytes), name)
		// checked/blocked/passed_<family>_<proto>, also by label.
		parts := strings.Split(name, "_")
		if len(parts) == 3 && (parts[0] == rules.CounterChecked || parts[0] == rules.CounterBlocked || parts[0] == rules.CounterPassed) {
			ch <- prometheus.MustNewConstMetric(k.queries, prometheus.CounterValue, float64(v.Packets), parts[0], parts[1], parts[2])
		}
		// action_<action> and list_<index>: matches per action and per list.
		if a, ok := strings.CutPrefix(name, "action_"); ok {
			ch <- prometheus.MustNewConstMetric(k.actions, prometheus.CounterValue, float64(v.Packets), a)
		}
		if l, ok := strings.CutPrefix(name, "list_"); ok {
			ch <- prometheus.MustNewConstMetric(k.lists, prometheus.CounterValue, float64(v.Packets), l)
		}
	}
}

func newMetrics(e *env, netns, table string) *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		&kernelCollector{
			e: e, netns: netns, table: table,
			packets: prometheus.NewDesc("nftdns_counter_packets_total", "Packets counted by the table's named counter.", []string{"counter"}, nil),
			bytes:   prometheus.NewDesc("nftdns_counter_bytes_total", "Bytes counted by the table's named counter.", []string{"counter"}, nil),
			queries: prometheus.NewDesc("nftdns_queries_total", "DNS queries by result (checked, blocked, passed), family and protocol, from the kernel counters.", []string{"result", "family", "proto"}, nil),
			actions: prometheus.NewDesc("nftdns_action_matches_total", "Matched queries by action (drop, reject, nxdomain, refused, log), from the kernel counters.", []string{"action"}, nil),
			lists:   prometheus.NewDesc("nftdns_list_matches_total", "Matched queries by list (its index in the applied generation, as in status), from the kernel counters.", []string{"list"}, nil),
			up:      prometheus.NewDesc("nftdns_kernel_counters_up", "1 if the last read of the kernel counters worked.", nil, nil),
		},
	)
	f := prometheus.NewGaugeVec
	m.upstreamUp = f(prometheus.GaugeOpts{Name: "nftdns_upstream_up", Help: "1 if the upstream is in the round robin by its health checks."}, []string{"upstream"})
	m.upstreamShare = f(prometheus.GaugeOpts{Name: "nftdns_upstream_share", Help: "Share of its family's round-robin slots the upstream holds."}, []string{"upstream"})
	m.healthChecks = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nftdns_health_checks_total", Help: "Health-check queries by upstream and result."}, []string{"upstream", "result"})
	m.listNames = f(prometheus.GaugeOpts{Name: "nftdns_list_names", Help: "Names each list contributed at the last refresh."}, []string{"source"})
	m.listFetchFails = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nftdns_list_fetch_failures_total", Help: "Failed fetches of URL lists (the last good copy was used)."}, []string{"source"})
	m.names = prometheus.NewGauge(prometheus.GaugeOpts{Name: "nftdns_names", Help: "Distinct names applied."})
	m.elements = prometheus.NewGauge(prometheus.GaugeOpts{Name: "nftdns_set_elements", Help: "Set elements applied."})
	m.applies = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nftdns_applies_total", Help: "Kernel transactions by kind (full, incremental, health) and result."}, []string{"kind", "result"})
	m.applySeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "nftdns_apply_duration_seconds", Help: "Duration of successful kernel transactions.",
		Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}}, []string{"kind"})
	m.refreshes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nftdns_refreshes_total", Help: "List refreshes by result."}, []string{"result"})
	m.refreshSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "nftdns_refresh_duration_seconds", Help: "Duration of successful refreshes (fetch, parse, compile, apply).",
		Buckets: []float64{.01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}})
	m.lastSuccess = f(prometheus.GaugeOpts{Name: "nftdns_last_success_timestamp_seconds", Help: "Unix time of the last success of apply, refresh and health transaction."}, []string{"what"})
	m.reg.MustRegister(m.upstreamUp, m.upstreamShare, m.healthChecks, m.listNames, m.listFetchFails, m.names, m.elements,
		m.applies, m.applySeconds, m.refreshes, m.refreshSeconds, m.lastSuccess)
	return m
}

// serve listens on addr and serves /metrics until stop is called. The
// listener is opened before serve returns, so a bad address fails the
// start; a later failure of the server goes to onErr.
func (m *metrics) serve(addr string, onErr func(error)) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			onErr(err) // the daemon goes on without metrics
		}
	}()
	return func() {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		<-done
	}, nil
}
