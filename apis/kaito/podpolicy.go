package kaito

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"
	psapi "k8s.io/pod-security-admission/api"
	"k8s.io/pod-security-admission/policy"
)

// Workspace content comes from whoever may submit a workspace (the CLI, kubectl, a Service Bus
// sender, a dataset upload). It describes a model, data and a serving pod; it never chooses who the
// pod runs as or what of the node it reaches. The steps run pods with identities of their own (the
// trainer's, the inference Service's), so a template that names a ServiceAccount, mounts the
// service-account token, joins the host's namespaces, runs privileged or mounts a host path would
// borrow privileges the submitter does not hold. These rules refuse each, naming the field.

// allowedVolume says whether a workspace may mount a volume of this kind: storage that Kubernetes
// scopes to the workspace's namespace (claims, ConfigMaps, Secrets) or to the pod (emptyDir).
// hostPath, the cloud disk sources, CSI drivers, projected service-account tokens and the rest are
// refused: each reaches beyond what the submitter owns.
func allowedVolume(v *corev1.VolumeSource) bool {
	set := 0
	ok := v.PersistentVolumeClaim != nil || v.ConfigMap != nil || v.Secret != nil || v.EmptyDir != nil
	for _, present := range []bool{
		v.HostPath != nil, v.GCEPersistentDisk != nil, v.AWSElasticBlockStore != nil, v.GitRepo != nil,
		v.NFS != nil, v.ISCSI != nil, v.Glusterfs != nil, v.RBD != nil, v.FlexVolume != nil, v.Cinder != nil,
		v.CephFS != nil, v.Flocker != nil, v.DownwardAPI != nil, v.FC != nil, v.AzureFile != nil,
		v.VsphereVolume != nil, v.Quobyte != nil, v.AzureDisk != nil, v.PhotonPersistentDisk != nil,
		v.Projected != nil, v.PortworxVolume != nil, v.ScaleIO != nil, v.StorageOS != nil, v.CSI != nil,
		v.Ephemeral != nil, v.Image != nil,
		v.PersistentVolumeClaim != nil, v.ConfigMap != nil, v.Secret != nil, v.EmptyDir != nil,
	} {
		if present {
			set++
		}
	}
	return ok && set == 1
}

const allowedVolumesMsg = "a workspace may mount persistentVolumeClaim, configMap, secret or emptyDir volumes only"

func validateVolumeSource(path *field.Path, v *corev1.VolumeSource) field.ErrorList {
	if v == nil || allowedVolume(v) {
		return nil
	}
	return field.ErrorList{field.Forbidden(path, allowedVolumesMsg)}
}

// validatePodTemplate refuses every field of a user pod template that chooses identity or node
// access: Kubernetes' own Pod Security "baseline" checks (the pod-security-admission library, so
// every field the cluster's admission would call node access is covered, seLinuxOptions, seccomp
// and AppArmor profiles, sysctls, probes aimed at other hosts among them), and kaitoflow's rules
// for what baseline allows but a workspace may not choose: an identity, the Secrets of its
// namespace, kaitoflow's own labels.
func validatePodTemplate(path *field.Path, t *corev1.PodTemplateSpec) field.ErrorList {
	var errs field.ErrorList
	spec := path.Child("spec")
	s := &t.Spec
	errs = append(errs, baseline(spec, t)...)
	for k := range t.Labels {
		if strings.HasPrefix(k, "kaitoflow.io/") || strings.HasPrefix(k, "azure.workload.identity/") {
			errs = append(errs, field.Forbidden(path.Child("metadata", "labels").Key(k), "kaitoflow sets its own labels and the workload identity's"))
		}
	}
	for i := range s.Volumes {
		if s.Volumes[i].Secret != nil {
			errs = append(errs, field.Forbidden(spec.Child("volumes").Index(i).Child("secret"), noSecrets))
		}
	}
	for i := range s.InitContainers {
		errs = append(errs, containerSecrets(spec.Child("initContainers").Index(i), &s.InitContainers[i])...)
	}
	for i := range s.Containers {
		errs = append(errs, containerSecrets(spec.Child("containers").Index(i), &s.Containers[i])...)
	}
	errs = append(errs, noIdentityOrHost(spec, s)...)
	for i := range s.Volumes {
		errs = append(errs, validateVolumeSource(spec.Child("volumes").Index(i), &s.Volumes[i].VolumeSource)...)
	}
	for i := range s.InitContainers {
		errs = append(errs, validateContainer(spec.Child("initContainers").Index(i), &s.InitContainers[i])...)
	}
	for i := range s.Containers {
		errs = append(errs, validateContainer(spec.Child("containers").Index(i), &s.Containers[i])...)
	}
	if len(s.EphemeralContainers) > 0 {
		errs = append(errs, field.Forbidden(spec.Child("ephemeralContainers"), "ephemeral containers are added by kubectl debug, not by a workspace"))
	}
	return errs
}

// baseline is the Pod Security Standards' baseline level, as the API server's admission checks it.
func baseline(spec *field.Path, t *corev1.PodTemplateSpec) field.ErrorList {
	var errs field.ErrorList
	if eval, err := policy.NewEvaluator(policy.DefaultChecks(), nil); err == nil {
		for _, r := range eval.EvaluatePod(psapi.LevelVersion{Level: psapi.LevelBaseline, Version: psapi.LatestVersion()}, &t.ObjectMeta, &t.Spec) {
			if !r.Allowed {
				errs = append(errs, field.Forbidden(spec, fmt.Sprintf("Pod Security baseline: %s (%s)", r.ForbiddenReason, r.ForbiddenDetail)))
			}
		}
	}
	return errs
}

// noIdentityOrHost refuses what would give a workspace's pods an identity or the node's: a
// ServiceAccount or its token, the node's namespaces, a node by name, root.
func noIdentityOrHost(spec *field.Path, s *corev1.PodSpec) field.ErrorList {
	var errs field.ErrorList
	if s.ServiceAccountName != "" {
		errs = append(errs, field.Forbidden(spec.Child("serviceAccountName"),
			"the inference Service runs as kaitoflow's own ServiceAccount; a workspace cannot choose one"))
	}
	if s.DeprecatedServiceAccount != "" {
		errs = append(errs, field.Forbidden(spec.Child("serviceAccount"),
			"the inference Service runs as kaitoflow's own ServiceAccount; a workspace cannot choose one"))
	}
	if s.AutomountServiceAccountToken != nil && *s.AutomountServiceAccountToken {
		errs = append(errs, field.Forbidden(spec.Child("automountServiceAccountToken"), "a workspace's pods get no API token"))
	}
	for _, f := range []struct {
		name string
		set  bool
	}{{"hostNetwork", s.HostNetwork}, {"hostPID", s.HostPID}, {"hostIPC", s.HostIPC}} {
		if f.set {
			errs = append(errs, field.Forbidden(spec.Child(f.name), "a workspace's pods do not share the node's namespaces"))
		}
	}
	if s.HostUsers != nil && *s.HostUsers {
		errs = append(errs, field.Forbidden(spec.Child("hostUsers"), "a workspace's pods do not share the node's user namespace"))
	}
	if s.NodeName != "" {
		errs = append(errs, field.Forbidden(spec.Child("nodeName"), "nodes are chosen by resource.labelSelector and the scheduler"))
	}
	if sc := s.SecurityContext; sc != nil && sc.RunAsUser != nil && *sc.RunAsUser == 0 {
		errs = append(errs, field.Forbidden(spec.Child("securityContext", "runAsUser"), "a workspace's pods do not run as root"))
	}
	return errs
}

func validateContainer(path *field.Path, c *corev1.Container) field.ErrorList {
	var errs field.ErrorList
	if sc := c.SecurityContext; sc != nil {
		scp := path.Child("securityContext")
		if sc.Privileged != nil && *sc.Privileged {
			errs = append(errs, field.Forbidden(scp.Child("privileged"), "a workspace's containers are not privileged"))
		}
		if sc.AllowPrivilegeEscalation != nil && *sc.AllowPrivilegeEscalation {
			errs = append(errs, field.Forbidden(scp.Child("allowPrivilegeEscalation"), "a workspace's containers cannot gain privileges"))
		}
		if sc.Capabilities != nil && len(sc.Capabilities.Add) > 0 {
			errs = append(errs, field.Forbidden(scp.Child("capabilities", "add"), "a workspace's containers get no added capabilities"))
		}
		if sc.RunAsUser != nil && *sc.RunAsUser == 0 {
			errs = append(errs, field.Forbidden(scp.Child("runAsUser"), "a workspace's containers do not run as root"))
		}
		if sc.ProcMount != nil && *sc.ProcMount == corev1.UnmaskedProcMount {
			errs = append(errs, field.Forbidden(scp.Child("procMount"), "a workspace's containers see the default /proc"))
		}
	}
	for i, p := range c.Ports {
		if p.HostPort != 0 {
			errs = append(errs, field.Forbidden(path.Child("ports").Index(i).Child("hostPort"), "a workspace's containers do not bind the node's ports"))
		}
	}
	return errs
}

// noSecrets: a template pod runs in the workspace's namespace, where the push secret and other
// workspaces' Secrets live too; a workspace submitted over the bus must not be able to read them
// into a pod it controls.
const noSecrets = "a template pod reads no Secrets of the namespace (name a gated model's token in presetOptions.modelAccessSecret instead)"

func containerSecrets(p *field.Path, c *corev1.Container) field.ErrorList {
	var errs field.ErrorList
	for j, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			errs = append(errs, field.Forbidden(p.Child("env").Index(j).Child("valueFrom", "secretKeyRef"), noSecrets))
		}
	}
	for j, e := range c.EnvFrom {
		if e.SecretRef != nil {
			errs = append(errs, field.Forbidden(p.Child("envFrom").Index(j).Child("secretRef"), noSecrets))
		}
	}
	return errs
}
