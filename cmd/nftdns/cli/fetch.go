package cli

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Limits of a URL list fetch.
const (
	fetchTimeout  = 60 * time.Second
	fetchMaxBytes = 256 << 20 // 256 MiB: ~10M names in hosts format
	sourcesDir    = "sources" // in STATE-DIR/TABLE
)

// isURL reports whether a blocklist entry is an http(s) URL.
func isURL(p string) bool {
	return strings.HasPrefix(p, "http://") || strings.HasPrefix(p, "https://")
}

// fetchMeta is what the cache keeps about a fetched list, beside its body.
type fetchMeta struct {
	URL          string    `json:"url"`
	ETag         string    `json:"etag,omitempty"`
	LastModified string    `json:"last_modified,omitempty"`
	Fetched      time.Time `json:"fetched"`
}

// fetchFailure is a URL whose fetch failed; its last good copy was used.
type fetchFailure struct {
	url string
	err error
}

// fetcher fetches URL lists into a cache directory.
type fetcher struct {
	dir    string
	client *http.Client
	max    int64
}

func newFetcher(stateDir, table string) *fetcher {
	return &fetcher{
		dir:    filepath.Join(stateDir, table, sourcesDir),
		client: &http.Client{Timeout: fetchTimeout},
		max:    fetchMaxBytes,
	}
}

func (f *fetcher) paths(url string) (body, meta string) {
	sum := sha256.Sum256([]byte(url))
	base := filepath.Join(f.dir, hex.EncodeToString(sum[:12]))
	return base + ".list", base + ".json"
}

// open returns the list at url as an open file: fetched again if the
// server has a newer one (revalidated with the cached ETag and
// Last-Modified), else the cached copy. When the fetch fails and a copy is
// cached, it returns the copy and the failure; with no copy it fails.
func (f *fetcher) open(ctx context.Context, url string) (*os.File, error, error) {
	bodyPath, metaPath := f.paths(url)
	var m fetchMeta
	cached := false
	if js, err := os.ReadFile(metaPath); err == nil && json.Unmarshal(js, &m) == nil && m.URL == url {
		if _, err := os.Stat(bodyPath); err == nil {
			cached = true
		}
	}
	ferr := f.fetch(ctx, url, bodyPath, metaPath, cached, m)
	if ferr != nil && !cached {
		return nil, nil, fmt.Errorf("blocklist %s: %w (and no earlier copy in %s)", url, ferr, f.dir)
	}
	file, err := os.Open(bodyPath)
	if err != nil {
		return nil, nil, fmt.Errorf("blocklist %s: cached copy: %w", url, err)
	}
	return file, ferr, nil
}

// fetch gets url into bodyPath unless the server says the cached copy is
// current (304). The copy is replaced only by a complete body.
func (f *fetcher) fetch(ctx context.Context, url, bodyPath, metaPath string, cached bool, m fetchMeta) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	if cached {
		if m.ETag != "" {
			req.Header.Set("If-None-Match", m.ETag)
		}
		if m.LastModified != "" {
			req.Header.Set("If-Modified-Since", m.LastModified)
		}
	}
	resp, err := f.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotModified && cached:
		return nil
	case resp.StatusCode != http.StatusOK:
		return fmt.Errorf("HTTP %s", resp.Status)
	}
	if err := os.MkdirAll(f.dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(f.dir, ".fetch-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	n, err := io.Copy(tmp, io.LimitReader(resp.Body, f.max+1))
	if err == nil && n > f.max {
		err = fmt.Errorf("larger than %d bytes", f.max)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	nm := fetchMeta{URL: url, ETag: resp.Header.Get("ETag"), LastModified: resp.Header.Get("Last-Modified"), Fetched: time.Now().UTC()}
	js, err := json.Marshal(nm)
	if err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), bodyPath); err != nil {
		return err
	}
	// The body is in place; meta without the validators only costs a full
	// fetch next time.
	if err := os.WriteFile(metaPath+".tmp", js, 0o600); err != nil {
		return err
	}
	return os.Rename(metaPath+".tmp", metaPath)
}

// openSources turns o's blocklists and allowlists into list sources, fetching URL lists. It
// returns the fetches that failed and fell back to their last good copy;
// the caller closes the sources' files.
func openSources(ctx context.Context, o *options) ([]listSource, []fetchFailure, error) {
	srcs := sourcesOf(o)
	var fails []fetchFailure
	var f *fetcher
	for i := range srcs {
		p := srcs[i].path
		if !isURL(p) {
			continue
		}
		if f == nil {
			f = newFetcher(o.stateDir, o.table)
		}
		file, ferr, err := f.open(ctx, p)
		if err != nil {
			closeSources(srcs)
			return nil, nil, err
		}
		if ferr != nil {
			fails = append(fails, fetchFailure{url: p, err: ferr})
		}
		srcs[i].stored = file
	}
	return srcs, fails, nil
}

func closeSources(srcs []listSource) {
	for _, s := range srcs {
		if s.stored != nil {
			s.stored.Close()
		}
	}
}
