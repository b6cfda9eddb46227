package kaito

import (
	"strings"
	"testing"

	"github.com/kaitoflow/kaitoflow/internal/netguard"
)

// inferenceBase serves a user template; each case below adds one field that would let workspace
// content choose an identity or reach the node.
const inferenceBase = `apiVersion: kaito.sh/v1alpha1
kind: Workspace
metadata:
  name: ws
  namespace: kaitoflow
resource:
  instanceType: Standard_NC24ads_A100_v4
  labelSelector:
    matchLabels:
      app: ws
inference:
  template:
    spec:
      containers:
      - name: model
        image: example.azurecr.io/model:1
`

func TestValidateRefusesIdentityAndHostAccess(t *testing.T) {
	tests := []struct {
		name      string
		doc       string
		wantField string
	}{
		// The reviewed attack: a template naming provision's ServiceAccount, whose token reads Secrets.
		{"serviceAccountName", strings.Replace(inferenceBase, "    spec:\n", "    spec:\n      serviceAccountName: kaitoflow-provision\n", 1), "inference.template.spec.serviceAccountName"},
		{"deprecated serviceAccount", strings.Replace(inferenceBase, "    spec:\n", "    spec:\n      serviceAccount: kaitoflow-provision\n", 1), "inference.template.spec.serviceAccount"},
		{"token automount", strings.Replace(inferenceBase, "    spec:\n", "    spec:\n      automountServiceAccountToken: true\n", 1), "inference.template.spec.automountServiceAccountToken"},
		{"hostNetwork", strings.Replace(inferenceBase, "    spec:\n", "    spec:\n      hostNetwork: true\n", 1), "inference.template.spec.hostNetwork"},
		{"hostPID", strings.Replace(inferenceBase, "    spec:\n", "    spec:\n      hostPID: true\n", 1), "inference.template.spec.hostPID"},
		{"hostIPC", strings.Replace(inferenceBase, "    spec:\n", "    spec:\n      hostIPC: true\n", 1), "inference.template.spec.hostIPC"},
		{"nodeName", strings.Replace(inferenceBase, "    spec:\n", "    spec:\n      nodeName: aks-gpu-0\n", 1), "inference.template.spec.nodeName"},
		{"root pod", strings.Replace(inferenceBase, "    spec:\n", "    spec:\n      securityContext: {runAsUser: 0}\n", 1), "inference.template.spec.securityContext.runAsUser"},
		{"hostPath volume", strings.Replace(inferenceBase, "    spec:\n", "    spec:\n      volumes:\n      - name: root\n        hostPath: {path: /}\n", 1), "inference.template.spec.volumes[0]"},
		{"projected token volume", strings.Replace(inferenceBase, "    spec:\n", "    spec:\n      volumes:\n      - name: t\n        projected: {sources: [{serviceAccountToken: {path: t}}]}\n", 1), "inference.template.spec.volumes[0]"},
		{"csi volume", strings.Replace(inferenceBase, "    spec:\n", "    spec:\n      volumes:\n      - name: c\n        csi: {driver: secrets-store.csi.k8s.io}\n", 1), "inference.template.spec.volumes[0]"},
		{"privileged", inferenceBase + "        securityContext: {privileged: true}\n", "inference.template.spec.containers[0].securityContext.privileged"},
		{"privilege escalation", inferenceBase + "        securityContext: {allowPrivilegeEscalation: true}\n", "inference.template.spec.containers[0].securityContext.allowPrivilegeEscalation"},
		{"capabilities", inferenceBase + "        securityContext: {capabilities: {add: [SYS_ADMIN]}}\n", "inference.template.spec.containers[0].securityContext.capabilities.add"},
		{"hostPort", inferenceBase + "        ports: [{containerPort: 80, hostPort: 80}]\n", "inference.template.spec.containers[0].ports[0].hostPort"},
		{"init container privileged", strings.Replace(inferenceBase, "    spec:\n", "    spec:\n      initContainers:\n      - name: i\n        image: busybox\n        securityContext: {privileged: true}\n", 1), "inference.template.spec.initContainers[0].securityContext.privileged"},
		// The namespace's Secrets (another workspace's push secret) into a pod the workspace controls.
		{"secret volume", strings.Replace(inferenceBase, "    spec:\n", "    spec:\n      volumes:\n      - {name: s, secret: {secretName: acr-push}}\n", 1), "inference.template.spec.volumes[0].secret"},
		{"secret env", inferenceBase + "        env: [{name: T, valueFrom: {secretKeyRef: {name: acr-push, key: .dockerconfigjson}}}]\n", "inference.template.spec.containers[0].env[0].valueFrom.secretKeyRef"},
		{"secret envFrom", inferenceBase + "        envFrom: [{secretRef: {name: acr-push}}]\n", "inference.template.spec.containers[0].envFrom[0].secretRef"},
		// What Pod Security's baseline calls node access, beyond the fields named above.
		{"SELinux type", strings.Replace(inferenceBase, "    spec:\n", "    spec:\n      securityContext: {seLinuxOptions: {type: spc_t}}\n", 1), "inference.template.spec"},
		{"unsafe sysctl", strings.Replace(inferenceBase, "    spec:\n", "    spec:\n      securityContext: {sysctls: [{name: kernel.msgmax, value: \"1\"}]}\n", 1), "inference.template.spec"},
		{"probe aimed at the metadata service", inferenceBase + "        readinessProbe: {httpGet: {host: 169.254.169.254, path: /metadata, port: 80}}\n", "inference.template.spec"},
		{"unconfined seccomp", inferenceBase + "        securityContext: {seccompProfile: {type: Unconfined}}\n", "inference.template.spec"},
		// kaitoflow's own labels, which say whose Service it is.
		{"kaitoflow label", strings.Replace(inferenceBase, "  template:\n", "  template:\n    metadata:\n      labels: {kaitoflow.io/workspace: victim}\n", 1), "inference.template.metadata.labels[kaitoflow.io/workspace]"},
		{"workload identity label", strings.Replace(inferenceBase, "  template:\n", "  template:\n    metadata:\n      labels: {azure.workload.identity/use: \"true\"}\n", 1), "inference.template.metadata.labels[azure.workload.identity/use]"},
		// The same route onto tuning Jobs: the input and output volumes.
		{"tuning input hostPath", strings.Replace(base, `    urls: ["https://example.com/data.parquet"]`, "    volumeSource: {hostPath: {path: /var/lib/kubelet}}", 1), "tuning.input.volumeSource"},
		{"tuning output hostPath", strings.Replace(base, "    image: example.azurecr.io/adapter:1\n    imagePushSecret: push\n", "    volumeSource: {hostPath: {path: /etc}}\n", 1), "tuning.output.volumeSource"},
		{"adapter hostPath", strings.Replace(inferenceBase, "  template:\n    spec:\n      containers:\n      - name: model\n        image: example.azurecr.io/model:1\n",
			"  preset: {name: phi-3-mini-4k-instruct}\n  adapters:\n  - source: {name: a, volumeSource: {hostPath: {path: /}}}\n", 1), "inference.adapters[0].source.volumeSource"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w, err := DecodeWorkspace([]byte(tc.doc))
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			errs := w.Validate(netguard.AddressPolicy{})
			for _, e := range errs {
				if e.Field == tc.wantField && strings.Contains(e.Error(), "Forbidden") {
					return
				}
			}
			t.Errorf("want Forbidden on %s, got:\n%s", tc.wantField, FieldErrors(errs))
		})
	}
}

func TestValidateAdmitsNamespacedVolumesAndSafeTemplates(t *testing.T) {
	for name, doc := range map[string]string{
		"template":            inferenceBase + "        securityContext: {runAsNonRoot: true, allowPrivilegeEscalation: false}\n",
		"template volumes":    strings.Replace(inferenceBase, "    spec:\n", "    spec:\n      automountServiceAccountToken: false\n      volumes:\n      - {name: a, persistentVolumeClaim: {claimName: c}}\n      - {name: b, configMap: {name: m}}\n      - {name: d, emptyDir: {}}\n", 1),
		"tuning output claim": strings.Replace(base, "    image: example.azurecr.io/adapter:1\n    imagePushSecret: push\n", "    volumeSource: {persistentVolumeClaim: {claimName: adapters}}\n", 1),
	} {
		w, err := DecodeWorkspace([]byte(doc))
		if err != nil {
			t.Fatalf("%s: decode: %v", name, err)
		}
		if errs := w.Validate(netguard.AddressPolicy{}); len(errs) > 0 {
			t.Errorf("%s refused:\n%s", name, FieldErrors(errs))
		}
	}
}
