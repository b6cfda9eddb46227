package main

import (
	"fmt"

	ggcrname "github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/spf13/cobra"

	"github.com/kaitoflow/kaitoflow/internal/adapter"
	"github.com/kaitoflow/kaitoflow/internal/registryauth"
)

func newPullAdapter(g *globals) *cobra.Command {
	var insecure, acrIdentity bool
	var secrets []string
	cmd := &cobra.Command{
		Use:   "pull-adapter REF DIR",
		Short: "Pull an adapter image and unpack its data/ files into DIR, verifying every digest (serve's init container)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			var opts []ggcrname.Option
			if insecure {
				opts = append(opts, ggcrname.Insecure)
			}
			ref, err := ggcrname.ParseReference(args[0], opts...)
			if err != nil {
				return fmt.Errorf("adapter reference %q: %w", args[0], err)
			}
			keychain, err := registryauth.AdapterKeychain(secrets, acrIdentity)
			if err != nil {
				return err
			}
			n, err := adapter.Pull(ref, args[1], adapter.AdapterLimits, remote.WithContext(cmd.Context()), remote.WithAuthFromKeychain(keychain))
			if err != nil {
				return err
			}
			fmt.Fprintf(g.out, "pulled %s: %d file(s) into %s\n", ref, n, args[1])
			return nil
		},
	}
	cmd.Flags().BoolVar(&insecure, "insecure-registry", false, "plain HTTP to the registry (local registries and tests only)")
	cmd.Flags().BoolVar(&acrIdentity, "acr-identity", false,
		"sign in to Azure Container Registries with the pod's workload identity when no pull secret has the registry's credentials")
	cmd.Flags().StringArrayVar(&secrets, "pull-secret", nil,
		"dockerconfigjson file with the registry credentials (repeatable: the first that has the registry's credentials is used)")
	return cmd
}
