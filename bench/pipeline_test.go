// Package bench measures kaitoflow against a baseline in the same run.
//
//	go test ./bench -run '^$' -bench . -benchtime 1x [-workspaces 500]
//
// The benchmarks drive N workspaces through the embedded pipeline with the sim drivers at zero
// delay (so what is measured is kaitoflow: decoding, validation, the runtime's publish-then-ack,
// the status projector, a real OCI build and push per workspace) and, in the same run, through a
// raw JetStream baseline: five durable consumers that ack and republish each message with the same
// stream settings, the same subjects and the same publish-before-ack discipline. It prints
// workspaces/s, per-hop p50/p99 latency as an observer on the stream sees it, and the ratio.
package bench

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kaitoflow/kaitoflow/apis/kaito"
	"github.com/kaitoflow/kaitoflow/events"
	"github.com/kaitoflow/kaitoflow/internal/compose/assembly"
	"github.com/kaitoflow/kaitoflow/internal/compose/embedded"
	"github.com/kaitoflow/kaitoflow/internal/netguard"
	"github.com/kaitoflow/kaitoflow/internal/runtime"
)

var workspaces = flag.Int("workspaces", 200, "workspaces per run")

// chain is the order of event types one tuning workspace produces.
var chain = []string{events.WorkspaceRequested, events.NodeReady, events.TuningStarted, events.TuningCompleted, events.ImagePushed, events.InferenceReady}

type result struct {
	name     string
	elapsed  time.Duration
	n        int
	hops     [][]time.Duration // per hop, one latency per workspace
	complete int
}

func (r result) rate() float64 { return float64(r.complete) / r.elapsed.Seconds() }

func pct(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

// observe records when each event of each workspace reaches an observer on the stream, and
// returns once n workspaces have reached the end of the chain.
func observe(ctx context.Context, js jetstream.JetStream, n int, started chan<- struct{}, finished chan<- string) (map[string]map[string]time.Time, error) {
	c, err := js.OrderedConsumer(ctx, runtime.StreamName, jetstream.OrderedConsumerConfig{FilterSubjects: chain, DeliverPolicy: jetstream.DeliverNewPolicy})
	if err != nil {
		return nil, err
	}
	seen := map[string]map[string]time.Time{}
	done := 0
	it, err := c.Messages()
	if err != nil {
		return nil, err
	}
	defer it.Stop()
	close(started)
	for done < n {
		m, err := it.Next()
		if err != nil {
			return seen, err
		}
		now := time.Now()
		ws := m.Headers().Get("ce-subject")
		if seen[ws] == nil {
			seen[ws] = map[string]time.Time{}
		}
		if _, dup := seen[ws][m.Subject()]; !dup {
			seen[ws][m.Subject()] = now
			if m.Subject() == events.InferenceReady {
				done++
				finished <- ws
			}
		}
	}
	return seen, nil
}

func summarize(name string, n int, start time.Time, seen map[string]map[string]time.Time) result {
	r := result{name: name, n: n, hops: make([][]time.Duration, len(chain)-1)}
	var last time.Time
	for _, s := range seen {
		end, ok := s[events.InferenceReady]
		if !ok {
			continue
		}
		r.complete++
		if end.After(last) {
			last = end
		}
		for i := 1; i < len(chain); i++ {
			a, okA := s[chain[i-1]]
			b, okB := s[chain[i]]
			if okA && okB {
				r.hops[i-1] = append(r.hops[i-1], b.Sub(a))
			}
		}
	}
	r.elapsed = last.Sub(start)
	return r
}

// datasetURL is a small dolly-style jsonl served on loopback: the sim trainer's wrapper really
// fetches it, as a tuning Job fetches its dataset.
var datasetURL string

func newWorkspace(i int) (events.Ref, *kaito.Workspace, error) {
	doc, err := os.ReadFile("../examples/fine-tuning/kaito_workspace_tuning_phi_3.yaml")
	if err != nil {
		return events.Ref{}, nil, err
	}
	ws, err := kaito.DecodeWorkspace(doc)
	if err != nil {
		return events.Ref{}, nil, err
	}
	ws.Name = fmt.Sprintf("bench-%05d", i)
	ws.Tuning.Input.URLs = []string{datasetURL}
	ws.Namespace = "default"
	ws.Generation = 1
	return events.WorkspaceRef(ws), ws, nil
}

// submit publishes workspace.requested for workspace i the way the API does after admitting it.
func submit(ctx context.Context, js jetstream.JetStream, i int, admit func(*kaito.Workspace) error) error {
	ref, ws, err := newWorkspace(i)
	if err == nil && admit != nil {
		err = admit(ws)
	}
	if err == nil {
		e := events.Must(events.New("bench", events.WorkspaceRequested, events.WorkspaceRequested, ref, ws, nil))
		err = runtime.JetStreamPublisher{JS: js}.Publish(ctx, e)
	}
	return err
}

// submitAll submits n workspaces at once, 16 publishers at a time: a burst.
func submitAll(ctx context.Context, js jetstream.JetStream, n int, admit func(*kaito.Workspace) error) error {
	var wg sync.WaitGroup
	errs := make(chan error, n)
	sem := make(chan struct{}, 16)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := submit(ctx, js, i, admit); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

func runKaitoflow(b *testing.B, n int, burst bool) result {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	ds := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, `{"messages":[{"role":"user","content":"When did Virgin Australia start operating?"},{"role":"assistant","content":"31 August 2000."}]}`+"\n")
	}))
	defer ds.Close()
	datasetURL = ds.URL + "/dolly.jsonl"
	p, err := embedded.Start(ctx, embedded.Config{DataDir: b.TempDir(), Listen: "127.0.0.1:0", Logger: slog.New(slog.DiscardHandler),
		Functions: assembly.Config{Policy: netguard.AddressPolicy{Allow: []string{"127.0.0.1"}}}})
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	return drive(b, ctx, p.JS, n, burst, "kaitoflow (sim drivers, zero delay)", func(ws *kaito.Workspace) error {
		_, _, err := p.Store.Admit(ctx, ws)
		return err
	})
}

// drive submits n workspaces — all at once (burst), or each after the previous one is ready, which
// shows per-hop latency without queueing — and summarizes what the observer saw.
func drive(b *testing.B, ctx context.Context, js jetstream.JetStream, n int, burst bool, name string, admit func(*kaito.Workspace) error) result {
	started := make(chan struct{})
	finished := make(chan string, n)
	type obs struct {
		seen map[string]map[string]time.Time
		err  error
	}
	res := make(chan obs, 1)
	go func() {
		s, err := observe(ctx, js, n, started, finished)
		res <- obs{s, err}
	}()
	<-started
	start := time.Now()
	if burst {
		if err := submitAll(ctx, js, n, admit); err != nil {
			b.Fatal(err)
		}
	} else {
		for i := range n {
			if err := submit(ctx, js, i, admit); err != nil {
				b.Fatal(err)
			}
			select {
			case <-finished:
			case <-ctx.Done():
				b.Fatal(ctx.Err())
			}
		}
	}
	o := <-res
	if o.err != nil {
		b.Fatal(o.err)
	}
	return summarize(name, n, start, o.seen)
}

// runBaseline: the same stream, the same five hops, each a durable pull consumer with the same
// concurrency that publishes the next subject (awaiting the ack, with a Nats-Msg-Id) and then
// acks its input — JetStream's own cost for this shape of pipeline, with no work in the hops.
func runBaseline(b *testing.B, n int, burst bool) result {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: b.TempDir(), NoSigs: true, NoLog: true})
	if err != nil {
		b.Fatal(err)
	}
	ns.Start()
	defer ns.Shutdown()
	if !ns.ReadyForConnections(10 * time.Second) {
		b.Fatal("nats not ready")
	}
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := (runtime.Storage{Replicas: 1}).EnsureStream(ctx, js); err != nil {
		b.Fatal(err)
	}
	hopCtx, stopHops := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for i := 1; i < len(chain); i++ {
		in, out := chain[i-1], chain[i]
		cons, err := js.CreateOrUpdateConsumer(ctx, runtime.StreamName, jetstream.ConsumerConfig{
			Durable: "baseline-" + strings.ReplaceAll(out, ".", "-"), FilterSubjects: []string{in},
			AckPolicy: jetstream.AckExplicitPolicy, AckWait: 30 * time.Second, MaxAckPending: 32,
		})
		if err != nil {
			b.Fatal(err)
		}
		it, err := cons.Messages(jetstream.PullMaxMessages(16))
		if err != nil {
			b.Fatal(err)
		}
		work := make(chan jetstream.Msg)
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for m := range work {
					next := nats.NewMsg(out)
					next.Header = m.Headers()
					next.Header.Set("ce-type", out)
					next.Header.Set(nats.MsgIdHdr, m.Headers().Get("ce-subject")+"/"+out)
					next.Data = m.Data()
					if _, err := js.PublishMsg(hopCtx, next); err != nil {
						_ = m.Nak()
						continue
					}
					_ = m.DoubleAck(hopCtx)
				}
			}()
		}
		go func() {
			<-hopCtx.Done()
			it.Stop()
		}()
		go func() {
			defer close(work)
			for {
				m, err := it.Next()
				if err != nil {
					return
				}
				work <- m
			}
		}()
	}
	r := drive(b, ctx, js, n, burst, "baseline (raw JetStream, 5 ack+republish hops)", nil)
	stopHops()
	wg.Wait()
	return r
}

// BenchmarkPipeline submits the workspaces as one burst: throughput, and latency under load.
func BenchmarkPipeline(b *testing.B) { bench(b, true) }

// BenchmarkPipelineSequential submits one workspace at a time: per-hop latency without queueing.
func BenchmarkPipelineSequential(b *testing.B) { bench(b, false) }

func bench(b *testing.B, burst bool) {
	n := *workspaces
	if !burst {
		n = min(n, 100)
	}
	for b.Loop() {
		base := runBaseline(b, n, burst)
		kf := runKaitoflow(b, n, burst)
		for _, r := range []result{base, kf} {
			if r.complete != n {
				b.Fatalf("%s: %d of %d workspaces completed", r.name, r.complete, n)
			}
		}
		report(b, base, kf, burst)
		b.ReportMetric(kf.rate(), "workspaces/s")
		b.ReportMetric(base.rate(), "baseline-workspaces/s")
		b.ReportMetric(kf.rate()/base.rate(), "ratio")
	}
}

func report(b *testing.B, base, kf result, burst bool) {
	var sb strings.Builder
	tw := tabwriter.NewWriter(&sb, 0, 0, 2, ' ', 0)
	mode := "one at a time"
	if burst {
		mode = "in one burst"
	}
	fmt.Fprintf(tw, "\n%d workspaces %s\tworkspaces/s", kf.n, mode)
	for i := 1; i < len(chain); i++ {
		fmt.Fprintf(tw, "\t%s p50/p99", strings.TrimPrefix(chain[i], "kaitoflow."))
	}
	fmt.Fprintln(tw)
	for _, r := range []result{base, kf} {
		fmt.Fprintf(tw, "%s\t%.1f", r.name, r.rate())
		for _, h := range r.hops {
			fmt.Fprintf(tw, "\t%s / %s", pct(h, 0.5).Round(10*time.Microsecond), pct(h, 0.99).Round(10*time.Microsecond))
		}
		fmt.Fprintln(tw)
	}
	fmt.Fprintf(tw, "ratio kaitoflow/baseline\t%.2f\n", kf.rate()/base.rate())
	_ = tw.Flush()
	b.Log(sb.String())
}
