//go:build tools

// Package tools pins ko, which builds kaitoflow's image and resolves the ko:// references in
// deploy/knative into a release (hack/release.sh, and the release test in deploy/). Built from
// source and cached outside the repository by hack/ko.sh.
package tools

import _ "github.com/google/ko"
