package rules

import (
	"bufio"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// ExpandPath returns the files a list path stands for: the path itself, or,
// when it holds glob characters (* ? [) and no file has that very name, the
// files matching it (filepath.Match syntax) in name order, as date-stamped
// feeds are meant to be read. A glob matching nothing, or a malformed one,
// is an input error: an empty feed directory must not silently empty the
// blocklist.
func ExpandPath(path string) ([]string, error) {
	if !strings.ContainsAny(path, "*?[") {
		return []string{path}, nil
	}
	if _, err := os.Lstat(path); err == nil {
		return []string{path}, nil
	}
	m, err := filepath.Glob(path)
	if err != nil {
		return nil, inputErrorf("list %s: bad glob: %v", path, err)
	}
	if len(m) == 0 {
		return nil, inputErrorf("list %s: the glob matches no file", path)
	}
	return m, nil // filepath.Glob sorts
}

// gzipMagic starts every gzip stream; no text list starts with it.
var gzipMagic = []byte{0x1f, 0x8b}

// maybeGunzip returns br's contents decompressed when they start with the
// gzip magic bytes, else br itself. Detection goes by content, not by the
// name, so a stored copy (kept as the bytes read, compressed) parses the
// same whatever it is called, and a ".gz" file a download tool already
// decompressed still reads.
func maybeGunzip(br *bufio.Reader, path string) (io.Reader, error) {
	head, _ := br.Peek(len(gzipMagic))
	if string(head) != string(gzipMagic) {
		return br, nil
	}
	src := &errSource{r: br}
	zr, err := gzip.NewReader(src)
	if err != nil {
		if src.err != nil {
			return nil, fmt.Errorf("read %s: %w", path, src.err)
		}
		return nil, inputErrorf("%s: bad gzip data: %v", path, err)
	}
	return &gzipText{zr: zr, src: src, path: path}, nil
}

// errSource remembers the first error of the underlying reader, so that a
// gzip failure can be told from a read failure.
type errSource struct {
	r   io.Reader
	err error
}

func (s *errSource) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil && err != io.EOF && s.err == nil {
		s.err = err
	}
	return n, err
}

// gzipText turns corrupt or truncated gzip data into an input error naming
// the file; read errors of the source stay what they are.
type gzipText struct {
	zr   *gzip.Reader
	src  *errSource
	path string
}

func (g *gzipText) Read(p []byte) (int, error) {
	n, err := g.zr.Read(p)
	if err != nil && err != io.EOF && g.src.err == nil {
		return n, inputErrorf("%s: bad gzip data: %v", g.path, err)
	}
	return n, err
}

// isInput reports whether err is an input error passed up from a reader.
func isInput(err error) bool {
	var ie *InputError
	return errors.As(err, &ie)
}
