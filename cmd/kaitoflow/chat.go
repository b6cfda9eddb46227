package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"
)

type chatMessage struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

func newChat(g *globals) *cobra.Command {
	var (
		cluster     clusterFlags
		noStream    bool
		printURL    bool
		maxTokens   int
		temperature float64
		wakeTimeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "chat NAME [PROMPT]",
		Short: "Talk to a Ready workspace's endpoint: one prompt, or an interactive conversation",
		Long: `chat sends a prompt to the workspace's chat endpoint (its URL from the status store) and
prints the answer as its tokens arrive (the OpenAI-compatible /v1/chat/completions, streamed). With
no PROMPT it reads prompts line by line and keeps the conversation. --no-stream uses Kaito's
POST /chat instead. --url prints the endpoint and the commands that reach it from inside the
cluster: a Knative Service's address is cluster-local, and its Kubernetes Service has no cluster IP.`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			w, err := g.getWorkspace(cmd.Context(), cluster, args[0])
			if err != nil {
				return err
			}
			if w.Endpoint == "" {
				return fmt.Errorf("workspace %s has no endpoint yet (phase %s)", w.Name, w.Phase)
			}
			model := w.Preset
			if len(w.Adapters) > 0 {
				model = w.Adapters[0]
			}
			if printURL {
				return printEndpoint(g.out, w.Endpoint, model)
			}
			c := &chatter{endpoint: strings.TrimSuffix(w.Endpoint, "/"), model: model, out: g.out, stream: !noStream,
				maxTokens: maxTokens, temperature: temperature, status: g.err, wakeAfter: 2 * time.Second, wakeTimeout: wakeTimeout}
			if sameOrigin(w.Endpoint, g.server) {
				c.token = g.token
			}
			if len(args) == 2 {
				_, err := c.say(cmd.Context(), args[1])
				return err
			}
			fmt.Fprintf(g.err, "chatting with %s (%s) at %s; an empty line or end of input ends it\n", w.Name, model, w.Endpoint)
			return c.converse(cmd.Context(), cmd.InOrStdin(), g.err)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&noStream, "no-stream", false, "use Kaito's POST /chat and print the whole answer at once")
	cluster.register(f)
	f.BoolVar(&printURL, "url", false, "print the endpoint's URL and curl commands that reach it from a pod in the cluster, and send nothing")
	f.IntVar(&maxTokens, "max-tokens", 0, "longest answer in tokens (0: the server's default)")
	f.Float64Var(&temperature, "temperature", -1, "sampling temperature (negative: the server's default)")
	f.DurationVar(&wakeTimeout, "wake-timeout", 30*time.Minute,
		"how long to wait for an endpoint scaled to zero to start answering (a GPU node and the model may have to start)")
	return cmd
}

// converse reads prompts line by line from in and answers each, keeping the conversation, until
// an empty line or the end of input; it prompts on prompt.
func (c *chatter) converse(ctx context.Context, in io.Reader, prompt io.Writer) error {
	sc := bufio.NewScanner(in)
	for fmt.Fprint(prompt, "> "); sc.Scan(); fmt.Fprint(prompt, "> ") {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			break
		}
		if _, err := c.say(ctx, line); err != nil {
			return err
		}
	}
	return sc.Err()
}

// printEndpoint prints the endpoint and, for both of its APIs, a one-off curl pod that calls it:
// the URL a Knative Service has is cluster-local (Kaito's `kubectl get svc` and its ClusterIP do
// not exist for it).
func printEndpoint(out io.Writer, endpoint, model string) error {
	openai, err := json.Marshal(map[string]any{"model": model, "messages": []chatMessage{{Role: "user", Content: "What is Kaito?"}}})
	if err != nil {
		return err
	}
	kaito, err := json.Marshal(map[string]any{"prompt": "What is Kaito?", "generate_kwargs": map[string]any{"max_new_tokens": 200}})
	if err != nil {
		return err
	}
	curl := func(path string, body []byte) string {
		return fmt.Sprintf("kubectl run chat-$RANDOM --rm -i --restart=Never --image=curlimages/curl -- \\\n  curl -sS %s%s -H 'Content-Type: "+
			"application/json' -d '%s'\n", endpoint, path, body)
	}
	_, err = fmt.Fprintf(out, "%s\n\n# OpenAI-compatible (model %s):\n%s\n# Kaito's /chat:\n%s", endpoint, model, curl("/v1/chat/completions",
		openai), curl("/chat", kaito))
	return err
}

// chatter holds one conversation with an endpoint.
type chatter struct {
	endpoint, model string
	out             io.Writer
	stream          bool
	maxTokens       int
	temperature     float64
	history         []chatMessage
	// status gets the waking notice: an endpoint scaled to zero answers only once a replica (and
	// maybe a GPU node) has started and loaded the model. wakeAfter is the silence before the
	// notice; wakeTimeout gives up.
	status                 io.Writer
	wakeAfter, wakeTimeout time.Duration
	// token is sent only to an endpoint served by the kaitoflow server itself (up's sim
	// endpoints, behind its token); a cluster's endpoint never sees the API's token.
	token string
}

// say sends prompt (with the conversation so far) and prints the answer, returning it.
func (c *chatter) say(ctx context.Context, prompt string) (string, error) {
	if !c.stream {
		return c.kaito(ctx, prompt)
	}
	msgs := slices.Concat(c.history, []chatMessage{{Role: "user", Content: prompt}})
	req := map[string]any{"model": c.model, "messages": msgs, "stream": true}
	if c.maxTokens > 0 {
		req["max_tokens"] = c.maxTokens
	}
	if c.temperature >= 0 {
		req["temperature"] = c.temperature
	}
	resp, err := c.post(ctx, "/v1/chat/completions", req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var answer strings.Builder
	// Server-sent events: one "data: {chunk}" per token group, then "data: [DONE]".
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data:")
		if !ok {
			continue
		}
		data = strings.TrimSpace(data)
		if data == "[DONE]" {
			break
		}
		var chunk struct {
			Choices []struct {
				Delta struct {
					Content string `json:"content"`
				} `json:"delta"`
			} `json:"choices"`
			Error *struct {
				Message string `json:"message"`
			} `json:"error"`
		}
		if err := json.Unmarshal([]byte(data), &chunk); err != nil {
			return answer.String(), fmt.Errorf("chat: a stream chunk is not JSON: %w", err)
		}
		if chunk.Error != nil {
			return answer.String(), fmt.Errorf("chat: the model server: %s", chunk.Error.Message)
		}
		for _, ch := range chunk.Choices {
			answer.WriteString(ch.Delta.Content)
			fmt.Fprint(c.out, ch.Delta.Content)
		}
	}
	fmt.Fprintln(c.out)
	if err := sc.Err(); err != nil {
		return answer.String(), fmt.Errorf("chat: stream broken: %w", err)
	}
	msgs = append(msgs, chatMessage{Role: "assistant", Content: answer.String()})
	c.history = msgs
	return answer.String(), nil
}

// kaito is one turn through Kaito's POST /chat, which has no conversation and no streaming.
func (c *chatter) kaito(ctx context.Context, prompt string) (string, error) {
	// The model names the workspace where the endpoint serves several (a serving pool).
	req := map[string]any{"prompt": prompt, "model": c.model}
	kw := map[string]any{}
	if c.maxTokens > 0 {
		kw["max_new_tokens"] = c.maxTokens
	}
	if c.temperature >= 0 {
		kw["temperature"] = c.temperature
	}
	if len(kw) > 0 {
		req["generate_kwargs"] = kw
	}
	resp, err := c.post(ctx, "/chat", req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var out struct {
		Result string `json:"Result"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return "", fmt.Errorf("chat: answer is not Kaito's {\"Result\": ...}: %w", err)
	}
	fmt.Fprintln(c.out, out.Result)
	return out.Result, nil
}

func (c *chatter) post(ctx context.Context, path string, body any) (*http.Response, error) {
	b, err := json.Marshal(body)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.endpoint+path, bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.do(req)
	if err != nil {
		return nil, fmt.Errorf("chat: %w", err)
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		var p struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(msg, &p) == nil && p.Error != "" {
			msg = []byte(p.Error)
		}
		return nil, fmt.Errorf("chat: %s %s: HTTP %d: %s", http.MethodPost, path, resp.StatusCode, bytes.TrimSpace(msg))
	}
	return resp, nil
}

// do sends req and, while no answer has started, says it is waking the endpoint and for how long
// so far; it gives up after wakeTimeout. Once the answer starts, the body streams without a limit.
func (c *chatter) do(req *http.Request) (*http.Response, error) {
	if c.status == nil || c.wakeAfter <= 0 {
		return http.DefaultClient.Do(req)
	}
	ctx, cancel := context.WithCancelCause(req.Context())
	req = req.WithContext(ctx)
	start := time.Now()
	answered, quiet := make(chan struct{}), make(chan struct{})
	var expired atomic.Bool
	var reached bool // written before answered is closed, read after
	giveUp := time.AfterFunc(cmp.Or(c.wakeTimeout, 30*time.Minute), func() {
		expired.Store(true)
		cancel(errors.New("no answer"))
	})
	go func() {
		defer close(quiet)
		t := time.NewTimer(c.wakeAfter)
		defer t.Stop()
		for said := false; ; {
			select {
			case <-answered:
				if said && reached {
					fmt.Fprintf(c.status, "\rthe endpoint answered after %s              \n", time.Since(start).Round(time.Second))
				}
				return
			case <-t.C:
				if !said {
					fmt.Fprintf(c.status,
						"waking %s: it was scaled to zero; a replica starts and loads the model (a GPU node may be provisioned first)\n", c.endpoint)
					said = true
				}
				fmt.Fprintf(c.status, "\rwaiting %s", time.Since(start).Round(time.Second))
				t.Reset(5 * time.Second)
			}
		}
	}()
	resp, err := http.DefaultClient.Do(req)
	giveUp.Stop()
	reached = err == nil
	close(answered)
	<-quiet // the notice is complete before the answer prints
	if err != nil {
		cancel(nil)
		if expired.Load() {
			return nil, fmt.Errorf("the endpoint did not answer within %s (waking from zero: node provisioning and model loading); raise "+
				"--wake-timeout", c.wakeTimeout)
		}
		return nil, err
	}
	// The body is read under ctx; release it with the body.
	resp.Body = &cancelOnClose{ReadCloser: resp.Body, cancel: func() { cancel(nil) }}
	return resp, nil
}

type cancelOnClose struct {
	io.ReadCloser
	cancel func()
}

func (c *cancelOnClose) Close() error {
	err := c.ReadCloser.Close()
	c.cancel()
	return err
}

// sameOrigin says whether two URLs share scheme, host and port.
func sameOrigin(a, b string) bool {
	ua, err1 := url.Parse(a)
	ub, err2 := url.Parse(b)
	return err1 == nil && err2 == nil && ua.Scheme == ub.Scheme && strings.EqualFold(ua.Host, ub.Host)
}
