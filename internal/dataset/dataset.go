// Package dataset checks tuning datasets before any GPU is bought: each URL answers, is not too
// big, and holds one of the shapes the trainer reads — a parquet file is judged by its footer,
// read with HTTP range requests, never downloaded; jsonl, json and csv by their first rows.
package dataset

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"path"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/parquet-go/parquet-go"

	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/internal/netguard"
)

// Failure reasons.
const (
	ReasonInvalid     = "DatasetInvalid"
	ReasonUnreachable = "DatasetUnreachable"
)

// Defaults.
const (
	DefaultMaxBytes = 10 << 30
	sampleBytes     = 64 << 10
)

// Checker checks dataset URLs.
type Checker struct {
	Client *http.Client
	// Policy is the address policy (the client enforces it at connect time too).
	Policy netguard.AddressPolicy
	// MaxBytes is the largest dataset file accepted.
	MaxBytes int64
	// Attempts and Backoff bound the retries of an unreachable host: brief, so an air-gapped
	// cluster fails the workspace in seconds rather than hanging provision.
	Attempts int
	Backoff  time.Duration
	// Transferred counts the response bytes read (for the benchmark).
	Transferred atomic.Int64
}

// New returns a checker whose HTTP client applies the address policy at connect time and to
// every redirect.
func New(p netguard.AddressPolicy) *Checker {
	return &Checker{Client: netguard.Client(p, 30*time.Second), Policy: p, MaxBytes: DefaultMaxBytes, Attempts: 3, Backoff: 500 * time.Millisecond}
}

// Shape is what a dataset file holds.
type Shape string

// Accepted shapes.
const (
	Messages         Shape = "messages"
	PromptCompletion Shape = "prompt_completion"
	Text             Shape = "text"
)

// Result describes one checked URL.
type Result struct {
	URL    string
	Size   int64
	Format string
	Shape  Shape
}

// Check checks every URL of a workspace's tuning input. The error is an events.PermanentError
// naming the URL (tuning.input.urls[i]) and the reason.
func (c *Checker) Check(ctx context.Context, urls []string) ([]Result, error) {
	var out []Result
	for i, u := range urls {
		r, err := c.checkURL(ctx, u)
		if err != nil {
			reason := ReasonInvalid
			if errors.Is(err, errUnreachable) {
				reason = ReasonUnreachable
			}
			return out, events.Permanentf(reason, "tuning.input.urls[%d] %s: %v", i, redact(u), err)
		}
		out = append(out, r)
	}
	return out, nil
}

var errUnreachable = errors.New("dataset unreachable")

func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return raw
	}
	return u.Redacted()
}

func (c *Checker) checkURL(ctx context.Context, raw string) (Result, error) {
	res := Result{URL: raw}
	size, final, err := c.head(ctx, raw)
	if err != nil {
		return res, err
	}
	res.Size = size
	if c.MaxBytes > 0 && size > c.MaxBytes {
		return res, fmt.Errorf("%s is over the %s limit", human(size), human(c.MaxBytes))
	}
	ext := strings.ToLower(path.Ext(mustPath(final)))
	// Parquet is judged by its footer alone; other formats by a sample of their first bytes
	// (which also tells a parquet file without the extension by its magic number).
	sample := int64(sampleBytes)
	if ext == ".parquet" {
		sample = 4
	}
	head, err := c.rangeGet(ctx, final, 0, min(sample, max(size, 1))-1)
	if err != nil {
		return res, err
	}
	switch {
	case ext == ".parquet" || bytes.HasPrefix(head, []byte("PAR1")):
		res.Format = "parquet"
		if size <= 0 {
			return res, errors.New("parquet needs a Content-Length to read its footer")
		}
		res.Shape, err = c.parquetShape(ctx, final, size)
	case ext == ".csv":
		res.Format = "csv"
		res.Shape, err = csvShape(head, size > int64(len(head)))
	case ext == ".json" && bytes.HasPrefix(bytes.TrimSpace(head), []byte("[")):
		res.Format = "json"
		res.Shape, err = jsonArrayShape(head)
	default:
		res.Format = "jsonl"
		res.Shape, err = jsonlShape(head, size > int64(len(head)))
	}
	return res, err
}

func mustPath(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return raw
	}
	return u.Path
}

// head answers the size and the URL after redirects (each redirect checked by the client).
func (c *Checker) head(ctx context.Context, raw string) (int64, string, error) {
	var last error
	for attempt := 0; attempt < max(c.Attempts, 1); attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return 0, "", ctx.Err()
			case <-time.After(c.Backoff * time.Duration(attempt)):
			}
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodHead, raw, nil)
		if err != nil {
			return 0, "", err
		}
		resp, err := c.Client.Do(req)
		if err != nil {
			if netguard.Refused(err) {
				return 0, "", err
			}
			var dns *net.DNSError
			var op *net.OpError
			if errors.As(err, &dns) || errors.As(err, &op) || errors.Is(err, context.DeadlineExceeded) {
				last = fmt.Errorf("%w: %w", errUnreachable, err)
				continue
			}
			return 0, "", err
		}
		resp.Body.Close()
		switch {
		case resp.StatusCode == http.StatusMethodNotAllowed:
			return -1, raw, nil // no HEAD: the ranged GET tells
		case resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests:
			last = fmt.Errorf("%w: HTTP %s", errUnreachable, resp.Status)
			continue
		case resp.StatusCode >= 300:
			return 0, "", fmt.Errorf("HTTP %s", resp.Status)
		}
		return resp.ContentLength, resp.Request.URL.String(), nil
	}
	return 0, "", last
}

// rangeGet reads bytes [from, to] of raw.
func (c *Checker) rangeGet(ctx context.Context, raw string, from, to int64) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, raw, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", from, to))
	resp, err := c.Client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent && resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("HTTP %s", resp.Status)
	}
	// A server that ignores Range answers 200 with everything: read only what was asked for.
	b, err := io.ReadAll(io.LimitReader(resp.Body, to-from+1))
	c.Transferred.Add(int64(len(b)))
	return b, err
}

// rangeReader is an io.ReaderAt over HTTP range requests: parquet-go reads the footer through it.
type rangeReader struct {
	ctx context.Context
	c   *Checker
	url string
}

func (r rangeReader) ReadAt(p []byte, off int64) (int, error) {
	b, err := r.c.rangeGet(r.ctx, r.url, off, off+int64(len(p))-1)
	n := copy(p, b)
	if err == nil && n < len(p) {
		err = io.EOF
	}
	return n, err
}

// tailReader serves reads that fall inside the file's tail (the footer already fetched and
// checked) from memory, and the rest over HTTP.
type tailReader struct {
	rangeReader
	tail    []byte
	tailOff int64
}

func (r tailReader) ReadAt(p []byte, off int64) (int, error) {
	if off >= r.tailOff && off+int64(len(p)) <= r.tailOff+int64(len(r.tail)) {
		return copy(p, r.tail[off-r.tailOff:]), nil
	}
	return r.rangeReader.ReadAt(p, off)
}

// parquetFooter fetches the footer and its trailer and checks the footer's encoding (checkFooter)
// before any parquet decoder sees it.
func (c *Checker) parquetFooter(ctx context.Context, rr rangeReader, size int64) ([]byte, error) {
	// A parquet file starts and ends with "PAR1"; the 4 bytes before the final magic are the
	// footer's length.
	if size < 12 {
		return nil, fmt.Errorf("%d bytes is too short for a parquet file", size)
	}
	trailer := make([]byte, 8)
	if _, err := rr.ReadAt(trailer, size-8); err != nil {
		return nil, fmt.Errorf("read the footer's length: %w", err)
	}
	if string(trailer[4:]) != "PAR1" {
		return nil, errors.New("no parquet magic at the end of the file")
	}
	n := int64(binary.LittleEndian.Uint32(trailer[:4]))
	if n > size-12 || n > maxFooterBytes {
		return nil, fmt.Errorf("the footer claims %d bytes, in a file of %d (at most %d MiB accepted)", n, size, maxFooterBytes>>20)
	}
	tail := make([]byte, n+8)
	if _, err := rr.ReadAt(tail, size-8-n); err != nil {
		return nil, fmt.Errorf("read the footer: %w", err)
	}
	if err := checkFooter(tail[:n]); err != nil {
		return nil, err
	}
	return tail, nil
}

func (c *Checker) parquetShape(ctx context.Context, raw string, size int64) (Shape, error) {
	rr := rangeReader{ctx: ctx, c: c, url: raw}
	tail, err := c.parquetFooter(ctx, rr, size)
	if err != nil {
		return "", fmt.Errorf("not a readable parquet file: %w", err)
	}
	f, err := parquet.OpenFile(tailReader{rangeReader: rr, tail: tail, tailOff: size - int64(len(tail))}, size,
		parquet.SkipPageIndex(true), parquet.SkipBloomFilters(true), parquet.ReadBufferSize(64<<10))
	if err != nil {
		return "", fmt.Errorf("not a readable parquet file: %w", err)
	}
	var cols []string
	has := map[string]bool{}
	for _, p := range f.Schema().Columns() {
		cols = append(cols, strings.Join(p, "."))
		has[p[0]] = true
		if p[0] == "messages" && len(p) > 1 {
			has["messages."+p[len(p)-1]] = true
		}
	}
	switch {
	case has["messages"] && has["messages.role"] && has["messages.content"]:
		return Messages, nil
	case has["messages"]:
		return "", fmt.Errorf("column messages has no role and content fields (columns: %s)", strings.Join(cols, ", "))
	case has["prompt"] && has["completion"]:
		return PromptCompletion, nil
	case has["text"]:
		return Text, nil
	}
	return "", fmt.Errorf("no accepted columns (messages with role and content; prompt and completion; text) among: %s", strings.Join(cols, ", "))
}

// rowShape decides a decoded row's shape, as the trainer will.
func rowShape(row map[string]any) (Shape, error) {
	if msgs, ok := row["messages"]; ok {
		list, ok := msgs.([]any)
		if !ok || len(list) == 0 {
			return "", errors.New("messages: want a non-empty list of {role, content}")
		}
		for i, m := range list {
			mm, ok := m.(map[string]any)
			if !ok || !slices.Contains([]string{"system", "user", "assistant", "tool"}, fmt.Sprint(mm["role"])) {
				return "", fmt.Errorf("messages[%d]: want {role: system|user|assistant|tool, content}", i)
			}
			if _, ok := mm["content"].(string); !ok {
				return "", fmt.Errorf("messages[%d].content: want text", i)
			}
		}
		return Messages, nil
	}
	_, p := row["prompt"]
	_, c := row["completion"]
	if p && c {
		return PromptCompletion, nil
	}
	if _, ok := row["text"].(string); ok {
		return Text, nil
	}
	var keys []string
	for k := range row {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return "", fmt.Errorf("no accepted fields (messages; prompt and completion; text) among: %s", strings.Join(keys, ", "))
}

// jsonlShape reads the first complete lines of a sample.
func jsonlShape(sample []byte, truncated bool) (Shape, error) {
	lines := bytes.Split(sample, []byte("\n"))
	if truncated && len(lines) > 1 {
		lines = lines[:len(lines)-1] // the last line may be cut
	}
	var shape Shape
	n := 0
	for i, l := range lines {
		if len(bytes.TrimSpace(l)) == 0 {
			continue
		}
		var row map[string]any
		if err := json.Unmarshal(l, &row); err != nil {
			return "", fmt.Errorf("line %d is not a JSON object: %w", i+1, err)
		}
		s, err := rowShape(row)
		if err != nil {
			return "", fmt.Errorf("line %d: %w", i+1, err)
		}
		if shape != "" && s != shape {
			return "", fmt.Errorf("line %d has shape %s, earlier lines %s", i+1, s, shape)
		}
		shape = s
		if n++; n >= 20 {
			break
		}
	}
	if shape == "" {
		return "", errors.New("no rows")
	}
	return shape, nil
}

func jsonArrayShape(sample []byte) (Shape, error) {
	dec := json.NewDecoder(bytes.NewReader(sample))
	if _, err := dec.Token(); err != nil {
		return "", err
	}
	var row map[string]any
	if err := dec.Decode(&row); err != nil {
		return "", fmt.Errorf("first row: %w", err)
	}
	return rowShape(row)
}

func csvShape(sample []byte, truncated bool) (Shape, error) {
	r := csv.NewReader(bufio.NewReader(bytes.NewReader(sample)))
	header, err := r.Read()
	if err != nil {
		return "", fmt.Errorf("csv header: %w", err)
	}
	first, err := r.Read()
	if err != nil && !(truncated && errors.Is(err, io.ErrUnexpectedEOF)) {
		return "", fmt.Errorf("csv first row: %w", err)
	}
	row := map[string]any{}
	for i, h := range header {
		if i < len(first) {
			var v any = first[i]
			if h == "messages" {
				_ = json.Unmarshal([]byte(first[i]), &v)
			}
			row[h] = v
		}
	}
	return rowShape(row)
}

func human(n int64) string {
	const unit = 1000
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %cB", float64(n)/float64(div), "kMGTPE"[exp])
}

// CheckImage resolves a dataset image's manifest (tuning.input.image). A registry that wants
// credentials is not an error here: the pull secrets live in the cluster, and the Job uses them.
func (c *Checker) CheckImage(ctx context.Context, image string, insecure bool) error {
	var opts []name.Option
	if insecure {
		opts = append(opts, name.Insecure)
	}
	ref, err := name.ParseReference(image, opts...)
	if err != nil {
		return events.Permanentf(ReasonInvalid, "tuning.input.image %q: %v", image, err)
	}
	if err := c.Policy.CheckHost(ref.Context().RegistryStr()); err != nil {
		host, _, _ := net.SplitHostPort(ref.Context().RegistryStr())
		if host == "" || c.Policy.CheckHost(host) != nil {
			return events.Permanentf(ReasonInvalid, "tuning.input.image %s: %v", image, err)
		}
	}
	_, err = remote.Head(ref, remote.WithContext(ctx), remote.WithTransport(c.Client.Transport))
	var te *transport.Error
	switch {
	case err == nil:
		return nil
	case errors.As(err, &te) && (te.StatusCode == http.StatusUnauthorized || te.StatusCode == http.StatusForbidden):
		return nil
	case errors.As(err, &te) && te.StatusCode == http.StatusNotFound:
		return events.Permanentf(ReasonInvalid, "tuning.input.image %s: no such image (%v)", image, err)
	case errors.As(err, &te):
		return events.Permanentf(ReasonInvalid, "tuning.input.image %s: %v", image, err)
	}
	return events.Permanentf(ReasonUnreachable, "tuning.input.image %s: %v", image, err)
}
