package main

import (
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"

	"github.com/kaitoflow/kaitoflow/internal/compose/install"
)

// installer is an install.Installer on the cluster the kubeconfig flags name.
func (g *globals) installer(c clusterFlags) (*install.Installer, error) {
	cfg, err := c.loader().ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	// Each request is bounded; the waits (CRDs established, Workspaces released) have their own.
	cfg.Timeout = 30 * time.Second
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, err
	}
	log, err := g.logger()
	if err != nil {
		return nil, err
	}
	return &install.Installer{Client: dyn, Mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc)), Log: log}, nil
}

func newInstall(g *globals) *cobra.Command {
	var (
		c    clusterFlags
		file string
	)
	cmd := &cobra.Command{
		Use:   "install -f RELEASE.yaml",
		Short: "Install or upgrade a kaitoflow release in the kubeconfig's cluster, never over Kaito's CRDs",
		Long: `install applies a release file (release.yaml, release-kaitoflow-group.yaml, release-servicebus.yaml,
release-webhook.yaml) server-side, as kubectl apply --server-side would, after checking that none of its
CRDs is already another operator's: where Kaito is installed, release.yaml is refused before anything
is written, naming release-kaitoflow-group.yaml, which installs beside it under kaitoflow.io. Run again
with a newer release to upgrade: what the part's previous release had and the new one has not is
deleted (CRDs and Namespaces are kept and named).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f, err := os.Open(file)
			if err != nil {
				return err
			}
			defer f.Close()
			objs, err := install.Parse(f)
			if err != nil {
				return fmt.Errorf("%s: %w", file, err)
			}
			in, err := g.installer(c)
			if err != nil {
				return err
			}
			res, err := in.Install(cmd.Context(), objs)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "kaitoflow %s: %d objects applied\n", res.Part, len(res.Applied))
			for _, r := range res.Pruned {
				fmt.Fprintf(out, "  removed %s (not in this release)\n", r)
			}
			for _, r := range res.Kept {
				fmt.Fprintf(out, "  kept %s (not in this release; delete it yourself once nothing uses it)\n", r)
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&file, "filename", "f", "", "the release file (hack/release.sh writes them)")
	_ = cmd.MarkFlagRequired("filename")
	c.registerTarget(cmd.Flags(), "install into")
	return cmd
}

func newUninstall(g *globals) *cobra.Command {
	var (
		c     clusterFlags
		part  string
		o     install.UninstallOptions
		force bool
	)
	cmd := &cobra.Command{
		Use:   "uninstall [--part core|servicebus|webhook]",
		Short: "Remove a kaitoflow part from the cluster: Workspaces first, while the controller releases their capacity",
		Long: `uninstall removes what install applied for a part (core by default). For the core, every Workspace
and InferenceSet of kaitoflow's CRDs is deleted first and given --wait to go: the controller, still
running, releases each one's GPU capacity and removes its finalizer. Workspaces still held then are
named and nothing else is deleted, unless --force, which lets them go and leaves their capacity to you.
Then the release's objects go, CRDs and the namespace last. Uninstall the optional parts first.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			in, err := g.installer(c)
			if err != nil {
				return err
			}
			o.Force = force
			refs, err := in.Uninstall(cmd.Context(), part, o)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "kaitoflow %s: %d objects removed\n", part, len(refs))
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&part, "part", "core", "which part: core, servicebus or webhook")
	fl.DurationVar(&o.Wait, "wait", 5*time.Minute, "how long Workspaces are given to release their capacity, and the release's objects to go")
	fl.BoolVar(&force, "force", false, "let Workspaces still held after --wait go without their capacity released")
	c.registerTarget(fl, "uninstall from")
	return cmd
}
