package knative

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/kaitoflow/kaitoflow/internal/kubeclient"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kaitoflow/kaitoflow/dataplane/chatproxy"
)

// LabelRevision and LabelService are Knative's labels naming a pod's revision and Service.
const (
	LabelRevision = "serving.knative.dev/revision"
	LabelService  = "serving.knative.dev/service"
)

// PodReplicas reads, from each running pod of a revision, what its chat-proxy serves (GET
// /adapters on the pod's own address and admin port: Knative's routing would reach only one of
// them, and does not route to that port).
type PodReplicas struct {
	Kube *kubeclient.Client
	HTTP *http.Client
	// Address is a pod's chat-proxy admin base URL; nil: http://<pod IP>:5001.
	Address func(corev1.Pod) string
}

// Replicas implements ReplicaReader: every running pod, ready or not (a pod that cannot load its
// first set never becomes ready, and its reason is what the workspace should be told).
func (p PodReplicas) Replicas(ctx context.Context, namespace, revision string) ([]Replica, error) {
	pods, err := p.Kube.Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: LabelRevision + "=" + revision})
	if err != nil {
		return nil, fmt.Errorf("list pods of revision %s/%s: %w", namespace, revision, err)
	}
	client := p.HTTP
	if client == nil {
		client = &http.Client{Timeout: 5 * time.Second}
	}
	tokens := map[string]string{} // by Service: a revision's pods share one
	var out []Replica
	for _, pod := range pods.Items {
		if pod.DeletionTimestamp != nil || pod.Status.Phase != corev1.PodRunning {
			continue
		}
		r := Replica{Ready: podReady(pod)}
		svc := pod.Labels[LabelService]
		token, ok := tokens[svc]
		if !ok {
			if token, err = p.adminToken(ctx, namespace, svc); err != nil {
				return nil, err
			}
			tokens[svc] = token
		}
		st, err := p.read(ctx, client, pod, token)
		if err != nil {
			r.Unreachable = err.Error()
		}
		r.ReplicaAdapters = st
		r.Replica = pod.Name
		out = append(out, r)
	}
	return out, nil
}

// Replica is one running pod and what its chat-proxy said it serves.
type Replica struct {
	chatproxy.ReplicaAdapters
	// Ready is the pod's readiness; Unreachable why its chat-proxy could not be asked.
	Ready       bool
	Unreachable string
}

// adminToken is the token service's replicas require on their admin port, from its adapter set's
// ConfigMap; empty when the set has none yet (the replicas then refuse, and say so).
func (p PodReplicas) adminToken(ctx context.Context, namespace, service string) (string, error) {
	cm, err := p.Kube.ConfigMaps(namespace).Get(ctx, AdapterSetName(service), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("admin token of %s/%s: %w", namespace, service, err)
	}
	return cm.Data[AdminTokenKey], nil
}

func (p PodReplicas) read(ctx context.Context, client *http.Client, pod corev1.Pod, token string) (chatproxy.ReplicaAdapters, error) {
	base := "http://" + net.JoinHostPort(pod.Status.PodIP, strconv.Itoa(AdminPort))
	if p.Address != nil {
		base = p.Address(pod)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/adapters", nil)
	if err != nil {
		return chatproxy.ReplicaAdapters{}, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	if err != nil {
		return chatproxy.ReplicaAdapters{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return chatproxy.ReplicaAdapters{}, fmt.Errorf("%s/adapters: %s", base, resp.Status)
	}
	var st chatproxy.ReplicaAdapters
	// The answer comes from a pod that runs third-party model code: bounded like any input.
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxReplicaAnswer)).Decode(&st); err != nil {
		return chatproxy.ReplicaAdapters{}, fmt.Errorf("%s/adapters: %w", base, err)
	}
	return st, nil
}

// maxReplicaAnswer bounds a replica's GET /adapters answer (its adapters and routes, some KiB).
const maxReplicaAnswer = 1 << 20

func podReady(pod corev1.Pod) bool {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
