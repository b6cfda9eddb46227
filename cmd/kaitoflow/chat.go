package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"

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
			src, err := g.workspaces(cluster)
			if err != nil {
				return err
			}
			w, err := src.Get(cmd.Context(), args[0])
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
			c := &chatter{endpoint: strings.TrimSuffix(w.Endpoint, "/"), model: model, out: g.out, stream: !noStream, maxTokens: maxTokens, temperature: temperature}
			if len(args) == 2 {
				_, err := c.say(cmd.Context(), args[1])
				return err
			}
			fmt.Fprintf(g.err, "chatting with %s (%s) at %s; an empty line or end of input ends it\n", w.Name, model, w.Endpoint)
			in := bufio.NewScanner(cmd.InOrStdin())
			for fmt.Fprint(g.err, "> "); in.Scan(); fmt.Fprint(g.err, "> ") {
				line := strings.TrimSpace(in.Text())
				if line == "" {
					break
				}
				if _, err := c.say(cmd.Context(), line); err != nil {
					return err
				}
			}
			return in.Err()
		},
	}
	f := cmd.Flags()
	f.BoolVar(&noStream, "no-stream", false, "use Kaito's POST /chat and print the whole answer at once")
	cluster.register(f)
	f.BoolVar(&printURL, "url", false, "print the endpoint's URL and curl commands that reach it from a pod in the cluster, and send nothing")
	f.IntVar(&maxTokens, "max-tokens", 0, "longest answer in tokens (0: the server's default)")
	f.Float64Var(&temperature, "temperature", -1, "sampling temperature (negative: the server's default)")
	return cmd
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
		return fmt.Sprintf("kubectl run chat-$RANDOM --rm -i --restart=Never --image=curlimages/curl -- \\\n  curl -sS %s%s -H 'Content-Type: application/json' -d '%s'\n", endpoint, path, body)
	}
	_, err = fmt.Fprintf(out, "%s\n\n# OpenAI-compatible (model %s):\n%s\n# Kaito's /chat:\n%s", endpoint, model, curl("/v1/chat/completions", openai), curl("/chat", kaito))
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
}

// say sends prompt (with the conversation so far) and prints the answer, returning it.
func (c *chatter) say(ctx context.Context, prompt string) (string, error) {
	if !c.stream {
		return c.kaito(ctx, prompt)
	}
	msgs := append(c.history, chatMessage{Role: "user", Content: prompt})
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
	c.history = append(msgs, chatMessage{Role: "assistant", Content: answer.String()})
	return answer.String(), nil
}

// kaito is one turn through Kaito's POST /chat, which has no conversation and no streaming.
func (c *chatter) kaito(ctx context.Context, prompt string) (string, error) {
	req := map[string]any{"prompt": prompt}
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
	resp, err := http.DefaultClient.Do(req)
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
