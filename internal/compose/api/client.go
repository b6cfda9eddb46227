package api

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/kaitoflow/kaitoflow/internal/status"
)

// Client calls the API.
type Client struct {
	BaseURL   string
	Namespace string
	// Token is sent as a bearer token when the server requires one.
	Token string
	HTTP  *http.Client
}

// APIError is a non-2xx answer.
type APIError struct {
	Status  int
	Problem Problem
}

func (e *APIError) Error() string {
	if len(e.Problem.Fields) == 0 {
		return fmt.Sprintf("%s (HTTP %d)", e.Problem.Error, e.Status)
	}
	var b strings.Builder
	b.WriteString(e.Problem.Error)
	for _, f := range e.Problem.Fields {
		if f.Message != e.Problem.Error { // a refusal that is one field's says it once
			b.WriteString("\n  " + f.Message)
		}
	}
	return b.String()
}

func (c *Client) http() *http.Client {
	if c.HTTP == nil {
		return http.DefaultClient
	}
	return c.HTTP
}

func (c *Client) url(path string, q url.Values) string {
	if q == nil {
		q = url.Values{}
	}
	if c.Namespace != "" && q.Get("namespace") == "" {
		q.Set("namespace", c.Namespace)
	}
	return strings.TrimSuffix(c.BaseURL, "/") + path + "?" + q.Encode()
}

func (c *Client) do(ctx context.Context, method, u string, body []byte, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, u, bytes.NewReader(body))
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/yaml")
	}
	c.authorize(req)
	resp, err := c.http().Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w (is `kaitoflow up` running?)", method, c.BaseURL, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		e := &APIError{Status: resp.StatusCode}
		if json.Unmarshal(b, &e.Problem) != nil || e.Problem.Error == "" {
			e.Problem.Error = strings.TrimSpace(string(b))
		}
		return e
	}
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("decode answer: %w", err)
		}
	}
	return nil
}

// Submit posts one manifest. With dryRun the server only validates it.
func (c *Client) Submit(ctx context.Context, manifest []byte, dryRun bool) (*SubmitResult, error) {
	var r SubmitResult
	q := url.Values{}
	if dryRun {
		q.Set("dryRun", "true")
	}
	if err := c.do(ctx, http.MethodPost, c.url("/v1/workspaces", q), manifest, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// SubmitConfigMap posts one ConfigMap manifest. With dryRun the server only validates it.
func (c *Client) SubmitConfigMap(ctx context.Context, manifest []byte, dryRun bool) (*ConfigMapResult, error) {
	var r ConfigMapResult
	q := url.Values{}
	if dryRun {
		q.Set("dryRun", "true")
	}
	if err := c.do(ctx, http.MethodPost, c.url("/v1/configmaps", q), manifest, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// ConfigMap returns one ConfigMap of the client's namespace.
func (c *Client) ConfigMap(ctx context.Context, name string) (*status.ConfigMap, error) {
	var cm status.ConfigMap
	if err := c.do(ctx, http.MethodGet, c.url("/v1/configmaps/"+url.PathEscape(name), nil), nil, &cm); err != nil {
		return nil, err
	}
	return &cm, nil
}

// ConfigMaps returns the ConfigMaps of the client's namespace, or of all when all is set.
func (c *Client) ConfigMaps(ctx context.Context, all bool) ([]status.ConfigMap, error) {
	var l []status.ConfigMap
	err := c.do(ctx, http.MethodGet, c.listURL("/v1/configmaps", all), nil, &l)
	return l, err
}

// List returns the workspaces of the client's namespace, or of all when all is set.
func (c *Client) List(ctx context.Context, all bool) ([]status.Workspace, error) {
	var l []status.Workspace
	err := c.do(ctx, http.MethodGet, c.listURL("/v1/workspaces", all), nil, &l)
	return l, err
}

// listURL is path for the client's namespace, or for every namespace.
func (c *Client) listURL(path string, all bool) string {
	if !all {
		return c.url(path, nil)
	}
	q := url.Values{"allNamespaces": {"true"}, "namespace": {""}}
	return strings.TrimSuffix(c.BaseURL, "/") + path + "?" + q.Encode()
}

// Get returns one workspace.
func (c *Client) Get(ctx context.Context, name string) (*status.Workspace, error) {
	var w status.Workspace
	if err := c.do(ctx, http.MethodGet, c.url("/v1/workspaces/"+url.PathEscape(name), nil), nil, &w); err != nil {
		return nil, err
	}
	return &w, nil
}

// Delete deletes one workspace.
func (c *Client) Delete(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, c.url("/v1/workspaces/"+url.PathEscape(name), nil), nil, nil)
}

// Rollback asks that generation's adapter (0: the one before the serving one) be served again.
func (c *Client) Rollback(ctx context.Context, name string, generation int64) (*status.Workspace, error) {
	return c.selectAdapter(ctx, name, RollbackRequest{Generation: generation})
}

// Promote asks that generation's adapter, held by the promotion policy (or older), be served; or,
// with checkpoint > 0, its checkpoint at that step.
func (c *Client) Promote(ctx context.Context, name string, generation int64, checkpoint int) (*status.Workspace, error) {
	return c.selectAdapter(ctx, name, RollbackRequest{Generation: generation, Checkpoint: checkpoint, Reason: "promote"})
}

func (c *Client) selectAdapter(ctx context.Context, name string, req RollbackRequest) (*status.Workspace, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	var w status.Workspace
	if err := c.do(ctx, http.MethodPost, c.url("/v1/workspaces/"+url.PathEscape(name)+"/rollback", nil), body, &w); err != nil {
		return nil, err
	}
	return &w, nil
}

// Watch calls fn with the workspace each time it changes until fn returns false, ctx ends or
// the stream does.
func (c *Client) Watch(ctx context.Context, name string, fn func(status.Workspace) bool) error {
	resp, err := c.stream(ctx, "/v1/workspaces/"+url.PathEscape(name)+"/events", nil, "text/event-stream")
	if err != nil {
		return fmt.Errorf("watch %s: %w", name, err)
	}
	return readEvents(ctx, resp, "watch "+name, fn)
}

// WatchList calls fn with each workspace of the namespace (every namespace with all), the current
// ones first, each time one changes, until fn returns false, ctx ends or the stream does.
func (c *Client) WatchList(ctx context.Context, all bool, fn func(status.Workspace) bool) error {
	q := url.Values{"watch": {"true"}}
	if all {
		q.Set("allNamespaces", "true")
	}
	resp, err := c.stream(ctx, "/v1/workspaces", q, "text/event-stream")
	if err != nil {
		return fmt.Errorf("watch workspaces: %w", err)
	}
	return readEvents(ctx, resp, "watch workspaces", fn)
}

// readEvents reads the server-sent workspaces of resp (api's stream) into fn; name names the
// watch in errors. A stream that ends before fn or ctx does is an error: the server went away.
func readEvents(ctx context.Context, resp *http.Response, name string, fn func(status.Workspace) bool) error {
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		// An older server answers ?watch=true with the list itself.
		return fmt.Errorf("%s: the server answered %s, not a stream of changes (is it an older kaitoflow?)", name, cmp.Or(ct, "no content type"))
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64*1024), 4<<20)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		var w status.Workspace
		if err := json.Unmarshal([]byte(data), &w); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if !fn(w) {
			return nil
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return fmt.Errorf("%s: the server ended the stream", name)
}

// Logs copies the trainer's output of the workspace's generation to w: attempt 0 is the newest;
// with follow, until the attempt ends or ctx does.
func (c *Client) Logs(ctx context.Context, name string, attempt int, follow bool, w io.Writer) error {
	q := url.Values{}
	if attempt > 0 {
		q.Set("attempt", strconv.Itoa(attempt))
	}
	if follow {
		q.Set("follow", "true")
	}
	resp, err := c.stream(ctx, "/v1/workspaces/"+url.PathEscape(name)+"/logs", q, "text/plain")
	if err != nil {
		return fmt.Errorf("logs of %s: %w", name, err)
	}
	defer resp.Body.Close()
	if _, err := io.Copy(w, resp.Body); err != nil && ctx.Err() == nil {
		return fmt.Errorf("logs of %s: %w", name, err)
	}
	return nil
}

// stream opens a long-lived GET: the response, whose body the caller closes, or the API's error.
func (c *Client) stream(ctx context.Context, path string, q url.Values, accept string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url(path, q), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", accept)
	c.authorize(req)
	resp, err := c.http().Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		e := &APIError{Status: resp.StatusCode}
		if json.Unmarshal(b, &e.Problem) != nil {
			e.Problem.Error = strings.TrimSpace(string(b))
		}
		return nil, e
	}
	return resp, nil
}

func (c *Client) authorize(req *http.Request) {
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
}
