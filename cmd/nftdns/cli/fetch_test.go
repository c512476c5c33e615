package cli

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
)

// fakeHTTP answers requests in-process: no socket, no namespace.
type fakeHTTP struct {
	body string
	etag string
	fail error
	code int
	reqs []*http.Request
}

func (f *fakeHTTP) RoundTrip(r *http.Request) (*http.Response, error) {
	f.reqs = append(f.reqs, r)
	if f.fail != nil {
		return nil, f.fail
	}
	resp := &http.Response{StatusCode: http.StatusOK, Status: "200 OK", Header: http.Header{}, Request: r}
	if f.code != 0 {
		resp.StatusCode, resp.Status = f.code, http.StatusText(f.code)
	}
	if f.etag != "" {
		resp.Header.Set("ETag", f.etag)
		if r.Header.Get("If-None-Match") == f.etag {
			resp.StatusCode, resp.Status = http.StatusNotModified, "304 Not Modified"
		}
	}
	resp.Body = io.NopCloser(strings.NewReader(f.body))
	return resp, nil
}

func readAll(t *testing.T, f *os.File) string {
	t.Helper()
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestFetcher: fetch, revalidate (304 keeps the copy), a failure or an
// oversized body keeps the last good copy and is reported, and with no
// copy a failure is an error.
func TestFetcher(t *testing.T) {
	t.Parallel()
	const url = "https://lists.example.invalid/a.txt"
	rt := &fakeHTTP{body: "a.example\n", etag: `"1"`}
	f := newFetcher(t.TempDir(), "nftdns")
	f.client = &http.Client{Transport: rt}
	f.max = 64
	ctx := context.Background()

	file, ferr, err := f.open(ctx, url)
	if err != nil || ferr != nil || readAll(t, file) != "a.example\n" {
		t.Fatalf("first fetch: %v %v", ferr, err)
	}
	rt.body = "changed, but the ETag says not\n"
	file, ferr, err = f.open(ctx, url)
	if err != nil || ferr != nil || readAll(t, file) != "a.example\n" {
		t.Fatalf("revalidation: %v %v", ferr, err)
	}
	if got := rt.reqs[1].Header.Get("If-None-Match"); got != `"1"` {
		t.Errorf("revalidation sent If-None-Match %q", got)
	}

	for _, tc := range []struct {
		name string
		set  func()
		want string
	}{
		{"network error", func() { rt.fail = errors.New("connection refused") }, "connection refused"},
		{"HTTP error", func() { rt.fail, rt.code, rt.etag = nil, http.StatusInternalServerError, "" }, "HTTP"},
		{"too big", func() { rt.code, rt.etag, rt.body = 0, `"2"`, strings.Repeat("b.example\n", 10) }, "larger than 64 bytes"},
	} {
		tc.set()
		file, ferr, err := f.open(ctx, url)
		if err != nil || ferr == nil || !strings.Contains(ferr.Error(), tc.want) {
			t.Errorf("%s: fetch error %v, error %v; want %q and the old copy", tc.name, ferr, err, tc.want)
			continue
		}
		if got := readAll(t, file); got != "a.example\n" {
			t.Errorf("%s: copy %q, want the last good one", tc.name, got)
		}
	}

	// A new body replaces the copy.
	rt.body = "c.example\n"
	file, ferr, err = f.open(ctx, url)
	if err != nil || ferr != nil || readAll(t, file) != "c.example\n" {
		t.Fatalf("new body: %v %v", ferr, err)
	}

	// No copy: an error naming the URL.
	rt.fail = errors.New("no route")
	if _, _, err := f.open(ctx, url+"2"); err == nil || !strings.Contains(err.Error(), url+"2") {
		t.Errorf("no copy: %v", err)
	}
}
